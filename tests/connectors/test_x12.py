"""X12 5010: 837I/837P built from the workflow's claim and validated by pyx12; 999/277CA/835 read into events;
the RCM simulator's X12 routes as a real HTTP peer."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connectors.simulators.rcm import RcmSimulator
from connectors.x12.adapter import X12Adapter
from connectors.x12.build import X12BuildError, build_837
from connectors.x12.events import x12_events
from connectors.x12.payer import build_835
from connectors.x12.reader import X12ParseError, parse
from connectors.x12.validate import validate_x12
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.models import Connector, Delivery, System

CLAIM: dict[str, Any] = {
    "patient_control_number": "ENC1001",
    "account_number": "ACC1001",
    "claim_frequency": "1",
    "facility": "GENHOSP",
    "patient": {"mrn": "MRN1", "name": "Jane Q Doe", "birth_date": "1980-02-03", "sex": "F"},
    "payer": {
        "id": "AETNA01",
        "name": "Aetna",
        "plan_id": "AET-PPO",
        "policy_number": "POL123456",
        "group_number": "GRP100",
    },
    "encounter": {
        "patient_class": "I",
        "admitted_at": "2026-01-01T08:30:00+00:00",
        "discharged_at": "2026-01-03T12:00:00+00:00",
        "disposition": "01",
        "attending": {"id": "1234567890", "name": "John Smith"},
        "financial_class": "COM",
    },
    "diagnoses": [
        {"code": "I10", "type": "F"},
        {"code": "E11.9", "type": "F"},
        {"code": "R07.9", "type": "A"},
    ],
    "lines": [
        {
            "charge_id": "C1",
            "chargemaster_code": "300001",
            "cpt": "",
            "quantity": "2",
            "amount": "3000.00",
            "service_date": "2026-01-01T09:00:00+00:00",
        },
        {
            "charge_id": "C2",
            "chargemaster_code": "450010",
            "cpt": "80053",
            "quantity": "1",
            "amount": "250.50",
            "service_date": "2026-01-02T09:00:00+00:00",
        },
        {
            "charge_id": "C3",
            "chargemaster_code": "450010",
            "cpt": "80053",
            "quantity": "1",
            "amount": "-20.00",
            "service_date": "2026-01-02T09:00:00+00:00",
            "type": "CD",
        },
    ],
    "total_charges": "3230.50",
}


def _claim(**changes: Any) -> dict[str, Any]:
    claim = copy.deepcopy(CLAIM)
    claim.update(changes)
    return claim


@pytest.mark.parametrize("kind", ["837I", "837P"])
@pytest.mark.parametrize("frequency", ["1", "7", "8"])
def test_it_builds_an_837_that_pyx12_accepts(kind: str, frequency: str) -> None:
    original = {"payer_claim_control_number": "ICN000001001"} if frequency != "1" else {}
    text = build_837(_claim(claim_frequency=frequency, **original), kind=kind, control_number=42)
    checked = validate_x12(text)
    assert checked.ok, checked.summary()
    assert "IK5*A" in checked.ack_999
    doc = parse(text)
    assert doc.header.control_id == "000000042"
    assert doc.get("GS-8") == ("005010X223A2" if kind == "837I" else "005010X222A1")
    assert doc.get("CLM-1") == "ENC1001"
    assert doc.get("CLM-5.3") == frequency
    # A replacement or void names the payer's ICN of the claim it replaces; an original names none.
    assert [r.el(2) for r in doc.all("REF") if r.el(1) == "F8"] == (["ICN000001001"] if original else [])
    # The credit line is left out and CLM02 is the sum of the lines sent.
    assert doc.get("CLM-2") == "3250.5"
    assert doc.get_all("LX[*]-1") == ["1", "2"]
    assert doc.get("SE-1") == str(sum(1 for s in doc.segments if s.id not in ("ISA", "GS", "GE", "IEA")))


@pytest.mark.parametrize("kind", ["837I", "837P"])
@pytest.mark.parametrize("patient_class", ["O", "E"])
def test_outpatient_and_emergency_claims_validate(kind: str, patient_class: str) -> None:
    claim = _claim()
    claim["encounter"] = {**claim["encounter"], "patient_class": patient_class, "admitted_at": ""}
    claim["patient"] = {"name": "Solo", "mrn": "M9"}  # no birth date, one-word name
    text = build_837(claim, kind=kind, control_number=12)
    checked = validate_x12(text)
    assert checked.ok, checked.summary()
    assert ("CL1***01~" in text) == (kind == "837I")


def test_the_institutional_claim_carries_the_stay_and_diagnoses() -> None:
    doc = parse(build_837(CLAIM, kind="837I", control_number=7))
    assert doc.get("HI-1") == "ABK:I10"
    assert doc.get("HI[2]-1") == "ABJ:R079"  # the admitting diagnosis
    assert doc.get("HI[3]-1") == "ABF:E119"
    assert doc.get("DTP[2]-3") == "20260101-20260103"
    assert doc.get("SV2-1") == "0300"
    assert doc.get("NM1[6]-9") == "1234567890"  # attending NPI (2310A)


def test_an_attending_id_that_is_not_an_npi_goes_in_a_reference() -> None:
    claim = _claim()
    claim["encounter"]["attending"] = {"id": "DR42", "name": "Ann Lee"}
    text = build_837(claim, kind="837I", control_number=3)
    assert "REF*G2*DR42~" in text
    assert validate_x12(text).ok


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"diagnoses": []}, "diagnoses"),
        ({"payer": {"id": ""}}, "payer.id"),
        ({"lines": []}, "lines"),
        ({"claim_frequency": "5"}, "claim_frequency"),
        ({"patient_control_number": ""}, "patient_control_number"),
        ({"lines": [{"charge_id": "X", "amount": "abc"}]}, "lines"),
    ],
)
def test_it_refuses_a_claim_an_837_cannot_carry(change: dict[str, Any], field: str) -> None:
    with pytest.raises(X12BuildError) as caught:
        build_837(_claim(**change), control_number=1)
    assert caught.value.field == field


def test_pyx12_names_the_segment_and_position_of_a_wrong_count() -> None:
    text = build_837(CLAIM, kind="837P", control_number=42).replace("SE*25*0042", "SE*24*0042")
    checked = validate_x12(text)
    assert not checked.ok
    assert "SE count of 24" in checked.summary()
    assert "IK5*R" in checked.ack_999


def test_pyx12_reports_an_invalid_element_with_its_reference() -> None:
    text = build_837(CLAIM, kind="837I", control_number=42).replace("DMG*D8*19800203", "DMG*D8*19801303")
    checked = validate_x12(text)
    assert not checked.ok
    issue = checked.issues[0]
    assert issue.segment == "DMG" and issue.element == "DMG02" and issue.position == 17


@pytest.mark.parametrize(
    ("mangle", "segment", "words"),
    [
        (lambda t: t.replace("SE*32*0042", "SE*31*0042"), "SE", "SE01 says 31"),
        (lambda t: t.replace("GE*1*42", "GE*2*42"), "GE", "GE01 says 2"),
        (lambda t: t.replace("IEA*1*000000042", "IEA*1*000000043"), "IEA", "does not match ISA13"),
        (lambda t: t.replace("GE*1*42~\n", ""), "IEA", "IEA before the GE"),
        (lambda t: t[:60], "ISA", "shorter"),
        (lambda t: "NOT X12 AT ALL", "ISA", "does not start with an ISA"),
        (lambda t: t.replace("IEA*1*000000042~\n", ""), "IEA", "ends without its IEA"),
    ],
)
def test_the_reader_says_which_segment_breaks_the_envelope(mangle: Any, segment: str, words: str) -> None:
    with pytest.raises(X12ParseError) as caught:
        parse(mangle(build_837(CLAIM, kind="837I", control_number=42)))
    assert caught.value.segment == segment
    assert words in caught.value.message
    assert caught.value.position is not None


REMIT = [
    {
        "claim_id": "ENC1",
        "amount": "1000",
        "paid": "800",
        "patient_responsibility": "50",
        "adjustments": [("CO", "45", "150"), ("PR", "2", "50")],
        "icn": "ICN1",
        "name": "Jane Doe",
    },
    {"claim_id": "ENC2", "amount": "100", "paid": "0", "adjustments": [("CO", "50", "100")], "icn": "ICN2"},
    {
        "claim_id": "ENC3",
        "amount": "200",
        "paid": "0",
        "status": "4",
        "adjustments": [("CO", "31", "200")],
        "icn": "ICN3",
    },
    {"claim_id": "ENC4", "amount": "-1000", "paid": "-800", "status": "22", "adjustments": [], "icn": "ICN4"},
    {
        "claim_id": "ENC5",
        "amount": "300",
        "paid": "0",
        "patient_responsibility": "300",
        "adjustments": [("PR", "1", "300")],
        "icn": "ICN5",
    },
]


def test_an_835_becomes_a_remittance_and_one_event_per_claim() -> None:
    text = build_835(REMIT, control_number=9, trace="TRC42")
    assert validate_x12(text).ok, validate_x12(text).summary()
    events = x12_events(text)
    remittance = events[0]
    assert remittance["type"] == "remittance.received"
    assert remittance["subject"] == "TRC42"
    assert remittance["data"]["claim_count"] == 5
    by_claim = {e["subject"]: e for e in events[1:]}
    assert by_claim["ENC1"]["type"] == "claim.paid"
    assert by_claim["ENC1"]["data"]["paid_amount"] == "800"
    assert by_claim["ENC1"]["data"]["patient_responsibility"] == "50"
    assert by_claim["ENC1"]["data"]["reasons"] == ["CO-45", "PR-2"]
    assert by_claim["ENC2"]["type"] == "claim.denied"  # nothing paid, payer adjustment CO-50
    assert by_claim["ENC3"]["type"] == "claim.denied"  # CLP02 4
    assert by_claim["ENC4"]["type"] == "claim.reversed"  # CLP02 22
    assert by_claim["ENC5"]["type"] == "claim.paid"  # all patient responsibility
    assert len({e["idempotency_key"] for e in events}) == len(events)
    assert x12_events(text) == events  # read twice, same keys: the store dedupes


def test_a_999_acknowledges_or_rejects_the_claims_of_its_group() -> None:
    ok = validate_x12(build_837(CLAIM, control_number=5)).ack_999
    bad = validate_x12(build_837(CLAIM, control_number=6).replace("SE*32*0006", "SE*3*0006")).ack_999
    [accepted] = x12_events(ok, claims_by_batch={"5": ["ENC1001"]})
    assert accepted["type"] == "claim.submitted" and accepted["subject"] == "ENC1001"
    [rejected] = x12_events(bad)
    assert rejected["type"] == "claim.rejected"
    assert rejected["subject"] == "x12-group:6"
    assert rejected["data"]["ack_code"] == "R"


def test_it_refuses_an_837_as_a_payer_answer() -> None:
    with pytest.raises(X12ParseError, match="expected 999, 277 or 835"):
        x12_events(build_837(CLAIM, control_number=5))


# The RCM simulator as the peer ---------------------------------------------------------------------------


@pytest.fixture
def rcm() -> Iterator[RcmSimulator]:
    sim = RcmSimulator("127.0.0.1", 0)
    sim.start()
    yield sim
    sim.stop()


def _connector(url: str, **config: Any) -> Connector:
    return Connector(
        system=System(code="rcm", name="RCM"),
        code="rcm-x12",
        name="RCM X12",
        direction=Direction.OUTBOUND,
        protocol=Protocol.X12,
        config={"transport": "http", "url": url, "claim_type": "837I", **config},
        timeout_seconds=5,
    )


def _delivery(pk: int, claim: dict[str, Any]) -> Delivery:
    return Delivery(
        pk=pk,
        operation="submit_claim",
        idempotency_key=f"ehr:claim:{pk}:1",
        payload=claim,
        business_key=claim["patient_control_number"],
    )


def test_the_adapter_sends_an_837_and_the_rcm_answers_999_277ca_and_835(rcm: RcmSimulator) -> None:
    adapter = X12Adapter()
    connector = _connector(f"{rcm.url}/x12/837")
    assert adapter.validate_config(Direction.OUTBOUND, connector.config) == []
    results = {}
    for pk, (pcn, payer) in enumerate(
        [("ENC1", "AETNA01"), ("ENC2", "DENY01"), ("ENC3", "AETNA01")], start=1
    ):
        claim = _claim(patient_control_number=pcn, payer={**CLAIM["payer"], "id": payer})
        results[pcn] = adapter.send(connector, _delivery(pk, claim))
    assert results["ENC1"].external_id == "B000001"
    assert results["ENC1"].response["ack"] == ["A"]
    # A retry of the same delivery is the same batch, not a second claim.
    again = adapter.send(connector, _delivery(1, _claim(patient_control_number="ENC1")))
    assert again.external_id == "B000001" and len(rcm.batches) == 3

    ack = httpx.get(f"{rcm.url}/x12/277ca/B000001").text
    assert validate_x12(ack).ok
    [accepted] = x12_events(ack)
    assert (accepted["type"], accepted["subject"]) == ("claim.accepted", "ENC1")

    remit = httpx.get(f"{rcm.url}/x12/835")
    assert remit.status_code == 200 and validate_x12(remit.text).ok
    outcomes = {e["subject"]: e["type"] for e in x12_events(remit.text)[1:]}
    assert outcomes["ENC2"] == "claim.denied"
    assert outcomes["ENC1"] == "claim.paid"
    assert httpx.get(f"{rcm.url}/x12/835").status_code == 204  # everything is remitted
    assert httpx.get(f"{rcm.url}/x12/835/1").text == remit.text


def test_the_rcm_rejects_an_invalid_837_with_a_999(rcm: RcmSimulator) -> None:
    text = build_837(CLAIM, control_number=8).replace("DMG*D8*19800203", "DMG*D8*19801303")
    response = httpx.post(f"{rcm.url}/x12/837", content=text)
    assert response.status_code == 200
    [event] = x12_events(response.text)
    assert event["type"] == "claim.rejected"
    assert "DMG" in event["data"]["reasons"][0]
    assert httpx.get(f"{rcm.url}/x12/277ca/{response.headers['X-Batch-Id']}").status_code == 404


def test_the_rcm_answers_400_to_a_body_that_is_not_x12(rcm: RcmSimulator) -> None:
    response = httpx.post(f"{rcm.url}/x12/837", content=b"hello")
    assert response.status_code == 400
    assert "ISA" in response.text


def test_a_277ca_rejects_the_claims_of_a_rejected_payer(rcm: RcmSimulator) -> None:
    rcm.rejected_payers.add("AETNA01")
    response = httpx.post(f"{rcm.url}/x12/837", content=build_837(CLAIM, control_number=11))
    [event] = x12_events(httpx.get(f"{rcm.url}/x12/277ca/{response.headers['X-Batch-Id']}").text)
    assert event["type"] == "claim.rejected" and event["data"]["status_category"] == "A7"


def test_the_json_claims_api_still_works(rcm: RcmSimulator) -> None:
    response = httpx.post(f"{rcm.url}/claims", json=CLAIM, headers={"Idempotency-Key": "k1"})
    assert response.status_code == 201 and response.json()["claim_id"] == "CLM-000001"
    assert httpx.get(f"{rcm.url}/claims").json()["claims"][0]["claim_id"] == "CLM-000001"


def test_the_adapter_refuses_a_claim_it_cannot_build(rcm: RcmSimulator) -> None:
    with pytest.raises(ConnectorError) as caught:
        X12Adapter().send(_connector(f"{rcm.url}/x12/837"), _delivery(1, _claim(diagnoses=[])))
    assert caught.value.permanent and "no diagnosis" in caught.value.message
    assert rcm.requests["POST /x12/837"] == 0


def test_the_adapter_reports_an_unreachable_rcm_as_transient() -> None:
    with pytest.raises(ConnectorError) as caught:
        X12Adapter().send(_connector("http://127.0.0.1:9/x12/837"), _delivery(1, CLAIM))
    assert not caught.value.permanent


def test_it_validates_the_outbound_config() -> None:
    errors = X12Adapter().validate_config(
        Direction.OUTBOUND,
        {"transport": "http", "url": "ftp://x", "claim_type": "837Z", "x12": {"usage": "Q"}},
    )
    assert any("url" in e for e in errors)
    assert any("claim_type" in e for e in errors)
    assert any("usage" in e for e in errors)


def test_the_adapter_parse_gives_the_mapping_engine_paths() -> None:
    doc = X12Adapter().parse(build_835(REMIT, control_number=9, trace="TRC42").encode())
    assert doc.header.message_type == "835"
    assert doc.get_all("CLP[*]-1") == ["ENC1", "ENC2", "ENC3", "ENC4", "ENC5"]
    assert doc.get("CLP[2]-2") == "1"
    assert doc.get("TRN-2") == "TRC42"
