"""The X12 round trip through the payer mailbox: the RCM simulator answers an 837 with a 999 on the socket and
drops its 277CA and 835s as files; the inbound X12 files connector picks them up, and the pipeline reads
them into claim.accepted/rejected/paid/denied and remittance.received. pyx12 validates every file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.files.poller import poll_connector
from connectors.simulators.rcm import PayerMailbox, RcmSimulator
from connectors.simulators.sftp_server import SftpServer
from connectors.x12.adapter import X12Adapter
from connectors.x12.build import build_837
from connectors.x12.events import x12_events
from connectors.x12.reader import parse
from connectors.x12.validate import validate_x12
from healthsync.choices import DeliveryStatus, Direction, MessageStatus, Protocol
from healthsync.errors import ConnectorError
from healthsync.models import CanonicalEvent, Connector, Delivery, Message, System
from healthsync.pipeline import process_pending
from healthsync.seed import seed_reference_config
from healthsync.seed_workflows import X12_REMITS_CONNECTOR, remits_route_x12
from tests.connectors.test_x12 import CLAIM, _claim

pytestmark = pytest.mark.django_db


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    return tmp_path / "mailbox"


@pytest.fixture
def rcm(mailbox: Path) -> Iterator[RcmSimulator]:
    with RcmSimulator("127.0.0.1", 0, mailbox=str(mailbox)) as sim:
        yield sim


@pytest.fixture
def remits(mailbox: Path) -> Connector:
    seed_reference_config()
    return remits_route_x12(source=str(mailbox))


def _outbound(url: str, **config: Any) -> Connector:
    return Connector(
        system=System(code="rcm-main", name="RCM"),
        code="rcm-x12",
        name="RCM X12",
        direction=Direction.OUTBOUND,
        protocol=Protocol.X12,
        config={"transport": "http", "url": url, "claim_type": "837I", **config},
        timeout_seconds=5,
    )


def _send(rcm: RcmSimulator, pk: int, claim: dict[str, Any], **config: Any) -> Any:
    delivery = Delivery(
        pk=pk,
        operation="submit_claim",
        idempotency_key=f"ehr:claim:{pk}:1",
        payload=claim,
        business_key=claim["patient_control_number"],
    )
    return X12Adapter().send(_outbound(f"{rcm.url}/x12/837", **config), delivery)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def _pick_up(connector: Connector) -> list[CanonicalEvent]:
    """One poll of the mailbox and one pass of the worker; the events the files became."""
    report = poll_connector(connector, sleep=lambda _: None)
    assert not report.failed, report.failed
    process_pending()
    return list(CanonicalEvent.objects.filter(message_id__in=report.stored))


def test_an_accepted_837_brings_a_277ca_file_that_becomes_claim_accepted(
    rcm: RcmSimulator, remits: Connector, mailbox: Path
) -> None:
    result = _send(rcm, 1, _claim(patient_control_number="ENC1"))
    assert result.response["ack"] == ["A"] and result.external_id == "B000001"

    assert _files(mailbox) == ["277ca-B000001.x12"]
    ack = (mailbox / "277ca-B000001.x12").read_text()
    assert validate_x12(ack).ok, validate_x12(ack).summary()

    [event] = _pick_up(remits)
    assert (event.type, event.subject, event.source) == ("claim.accepted", "ENC1", "rcm-main")
    assert event.data["patient_control_number"] == "ENC1"
    assert event.data["payer_claim_control_number"] == "ICN000001001"
    assert event.data["claim_frequency"] == "1"  # REF*BLT 111: an original inpatient claim
    message = Message.objects.get(connector=remits)
    assert message.message_type == "277" and message.status == MessageStatus.PROCESSED
    # Taken files leave the pick-up folder for the archive.
    assert _files(mailbox) == [] and len(_files(mailbox / "archive")) == 1


def test_an_835_with_a_denial_becomes_claim_denied_and_the_paid_claim_claim_paid(
    rcm: RcmSimulator, remits: Connector, mailbox: Path
) -> None:
    _send(rcm, 1, _claim(patient_control_number="ENC1"))
    _send(rcm, 2, _claim(patient_control_number="ENC2", payer={**CLAIM["payer"], "id": "DENY01"}))
    _pick_up(remits)  # the two 277CAs

    remit = rcm.remit()
    assert remit is not None and validate_x12(remit).ok, validate_x12(remit or "").summary()
    assert _files(mailbox) == ["835-TRC0000001.x12"]
    assert rcm.remit() is None  # everything is remitted

    events = {(e.type, e.subject): e for e in _pick_up(remits)}
    assert set(events) == {
        ("remittance.received", "TRC0000001"),
        ("claim.paid", "ENC1"),
        ("claim.denied", "ENC2"),
    }
    paid = events["claim.paid", "ENC1"].data
    assert paid["paid_amount"] == "2600.4" and paid["patient_control_number"] == "ENC1"
    denied = events["claim.denied", "ENC2"].data
    assert denied["paid_amount"] == "0" and denied["reasons"] == ["CO-50"]
    remittance = events["remittance.received", "TRC0000001"].data
    assert remittance["claim_count"] == 2 and remittance["payer"] == "DEMO PAYER"


def test_the_same_file_picked_up_twice_emits_nothing_new(
    rcm: RcmSimulator, remits: Connector, mailbox: Path
) -> None:
    _send(rcm, 1, _claim(patient_control_number="ENC1"))
    text = (mailbox / "277ca-B000001.x12").read_text()
    _pick_up(remits)
    (mailbox / "again.x12").write_text(text)  # the clearinghouse drops it again under another name
    _pick_up(remits)
    assert CanonicalEvent.objects.filter(type="claim.accepted").count() == 1


def test_a_half_written_file_is_not_read(remits: Connector, mailbox: Path) -> None:
    mailbox.mkdir()
    partial = mailbox / "835-TRC0000009.x12"
    whole = build_835_text()
    partial.write_text(whole[:200])

    def writer_keeps_writing(_: float) -> None:
        with open(partial, "a") as handle:
            handle.write(whole[200:])

    report = poll_connector(remits, sleep=writer_keeps_writing)
    assert report.waiting == ["835-TRC0000009.x12"] and not Message.objects.exists()
    # A temporary dot-name (how the simulator writes before its rename) is never a candidate.
    (mailbox / ".835-TRC0000010.x12.1a2b3c4d.part").write_text(whole[:100])
    report = poll_connector(remits, sleep=lambda _: None)
    assert len(report.stored) == 1 and bytes(Message.objects.get().raw).decode() == whole
    assert _files(mailbox) == [".835-TRC0000010.x12.1a2b3c4d.part"]


def build_835_text() -> str:
    from connectors.x12.payer import build_835

    return build_835(
        [{"claim_id": "ENC9", "amount": "100", "paid": "80", "adjustments": [("CO", "45", "20")]}],
        control_number=9,
        trace="TRC0000009",
    )


def test_the_simulator_writes_each_file_atomically(rcm: RcmSimulator, mailbox: Path) -> None:
    _send(rcm, 1, _claim(patient_control_number="ENC1"))
    rcm.remit()
    assert _files(mailbox) == ["277ca-B000001.x12", "835-TRC0000001.x12"]  # no temporary file left behind
    assert rcm.mailbox is not None and rcm.mailbox.pending == []


def test_a_bad_x12_file_goes_to_the_error_folder_with_a_reason_and_is_kept_as_rejected(
    remits: Connector, mailbox: Path
) -> None:
    mailbox.mkdir()
    bad = b"ISA*00*this is not an interchange~"
    (mailbox / "broken.x12").write_bytes(bad)
    report = poll_connector(remits, sleep=lambda _: None)
    assert [name for name, _ in report.failed] == ["broken.x12"]
    message = Message.objects.get(connector=remits)
    assert message.status == MessageStatus.REJECTED and bytes(message.raw) == bad and message.error
    errors = _files(mailbox / "error")
    assert errors[0].endswith("-broken.x12") and errors[1].endswith("-broken.x12.reason.txt")
    reason = (mailbox / "error" / errors[1]).read_text()
    assert reason.startswith("X12 ") and f"message #{message.pk}" in reason
    process_pending()
    assert not CanonicalEvent.objects.exists()


def test_an_837_the_rcm_rejects_drops_no_277ca(rcm: RcmSimulator, mailbox: Path) -> None:
    bad = build_837(CLAIM, control_number=8).replace("DMG*D8*19800203", "DMG*D8*19801303")
    response = httpx.post(f"{rcm.url}/x12/837", content=bad)
    assert "IK5*R" in response.text
    assert not mailbox.exists() or _files(mailbox) == []


# Voids and replacements -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["837I", "837P"])
def test_a_void_names_the_original_icn_and_the_rcm_voids_that_claim(
    rcm: RcmSimulator, remits: Connector, mailbox: Path, kind: str
) -> None:
    _send(rcm, 1, _claim(patient_control_number="ENC1"), claim_type=kind)
    [accepted] = _pick_up(remits)
    icn = accepted.data["payer_claim_control_number"]

    void = _claim(patient_control_number="ENC1", claim_frequency="8", original_claim_id="B000001")
    result = _send(rcm, 2, void, claim_type=kind)  # the ICN comes from the 277CA event
    assert result.response["replaces_icn"] == icn

    sent = rcm.batches["B000002"]
    assert sent["accepted"]
    [claim] = sent["claims"]
    assert (claim["frequency"], claim["original_icn"]) == ("8", icn)
    [acknowledged] = _pick_up(remits)
    assert acknowledged.type == "claim.accepted" and acknowledged.data["payer_claim_control_number"] == ""
    assert rcm.batches["B000001"]["claims"][0]["voided"]
    assert rcm.remit() is None  # the voided claim is never paid


@pytest.mark.parametrize("kind", ["837I", "837P"])
@pytest.mark.parametrize("financial_class", ["COM", "MCR", "MCD", "SP", ""])
def test_every_financial_class_the_ehr_sends_makes_a_valid_837(kind: str, financial_class: str) -> None:
    # The demo found it: self-pay went out as SBR09 09, a code 5010 no longer has, and pyx12 refused a
    # quarter of the claims.
    claim = _claim()
    claim["encounter"] = {**claim["encounter"], "financial_class": financial_class}
    checked = validate_x12(build_837(claim, kind=kind, control_number=31))
    assert checked.ok, checked.summary()


def test_the_void_837_carries_ref_f8_and_frequency_8_and_validates() -> None:
    for kind in ("837I", "837P"):
        claim = _claim(claim_frequency="8", payer_claim_control_number="ICN000001001")
        text = build_837(claim, kind=kind, control_number=77)
        checked = validate_x12(text)
        assert checked.ok, checked.summary()
        doc = parse(text)
        assert doc.get("CLM-5.3") == "8"
        assert [(r.el(1), r.el(2)) for r in doc.all("REF") if r.el(1) == "F8"] == [("F8", "ICN000001001")]


def test_a_void_of_an_unknown_icn_is_rejected_in_the_277ca(
    rcm: RcmSimulator, remits: Connector, mailbox: Path
) -> None:
    void = _claim(patient_control_number="ENC1", claim_frequency="8", payer_claim_control_number="ICN999")
    result = _send(rcm, 1, void)
    assert result.response["ack"] == ["A"]  # the syntax is fine: the payer rejects it in the 277CA
    [event] = _pick_up(remits)
    assert event.type == "claim.rejected" and event.data["status_category"] == "A7"
    assert event.data["reasons"] == ["A7:21"]


def test_voiding_a_paid_claim_reverses_it_in_the_next_835(
    rcm: RcmSimulator, remits: Connector, mailbox: Path
) -> None:
    _send(rcm, 1, _claim(patient_control_number="ENC1"))
    rcm.remit()
    _pick_up(remits)
    _send(rcm, 2, _claim(patient_control_number="ENC1", claim_frequency="8"))
    remit = rcm.remit()
    assert remit is not None and validate_x12(remit).ok, validate_x12(remit or "").summary()
    [reversal] = [e for e in x12_events(remit) if e["type"] != "remittance.received"]
    assert reversal["type"] == "claim.reversed" and reversal["data"]["paid_amount"] == "-2600.4"


def test_a_void_waits_while_no_payer_answer_names_the_original(rcm: RcmSimulator) -> None:
    seed_reference_config()
    with pytest.raises(ConnectorError) as caught:
        _send(rcm, 1, _claim(patient_control_number="ENC1", claim_frequency="8"))
    assert not caught.value.permanent and "waits for the payer's claim control number" in caught.value.message
    assert rcm.requests["POST /x12/837"] == 0


def test_a_second_void_does_not_name_an_icn_already_taken_back(
    rcm: RcmSimulator, remits: Connector, mailbox: Path
) -> None:
    _send(rcm, 1, _claim(patient_control_number="ENC1"))
    _pick_up(remits)
    void = _claim(patient_control_number="ENC1", claim_frequency="8")
    result = _send(rcm, 2, void)
    Delivery.objects.create(
        connector=Connector.objects.get(code="rcm-claims"),
        operation="submit_claim",
        idempotency_key="void-1",
        payload=void,
        business_key="ENC1",
        status=DeliveryStatus.SUCCEEDED,
        response=result.response,
    )
    with pytest.raises(ConnectorError, match="waits for"):
        _send(rcm, 3, void)


# SFTP ------------------------------------------------------------------------------------------------------


def test_the_mailbox_works_over_sftp_with_the_password_a_secret(rcm: RcmSimulator, tmp_path: Path) -> None:
    root = tmp_path / "sftp"
    (root / "inbox").mkdir(parents=True)
    with SftpServer(str(root), username="clearinghouse", password="s3cret") as sftp:
        location = sftp.connector_config("/inbox")
        assert "password" not in location
        rcm.mailbox = PayerMailbox(location, secrets=sftp.secrets(), timeout=5)
        seed_reference_config()
        connector = remits_route_x12(source=location, secrets=sftp.secrets())
        connector = Connector.objects.get(code=X12_REMITS_CONNECTOR)
        assert "s3cret" not in str(connector.config) and connector.secrets == {"sftp_password": "s3cret"}
        assert X12Adapter().validate_config(Direction.INBOUND, connector.config) == []
        assert X12Adapter().test_connection(connector)[0]

        _send(rcm, 1, _claim(patient_control_number="ENC1"))
        assert _files(root / "inbox") == ["277ca-B000001.x12"]
        [event] = _pick_up(connector)
        assert event.type == "claim.accepted"
        assert _files(root / "inbox") == [] and len(_files(root / "inbox" / "archive")) == 1


def test_an_837_file_drop_over_sftp_uses_the_connector_secret(tmp_path: Path) -> None:
    root = tmp_path / "sftp"
    (root / "out").mkdir(parents=True)
    with SftpServer(str(root), username="hospital", password="s3cret") as sftp:
        connector = Connector(
            code="rcm-x12-sftp",
            direction=Direction.OUTBOUND,
            protocol=Protocol.X12,
            timeout_seconds=5,
            config={"transport": "file", "file": {"destination": sftp.connector_config("/out")}},
        )
        connector.secrets = sftp.secrets()
        assert X12Adapter().test_connection(connector) == (True, "sftp:/out lists 0 files")
        delivery = Delivery(pk=5, idempotency_key="k5", payload=CLAIM, business_key="ENC1001")
        result = X12Adapter().send(connector, delivery)
        [written] = (root / "out").iterdir()
        assert result.response["file"].endswith(written.name) and validate_x12(written.read_text()).ok
        connector.secrets = {"sftp_password": "wrong"}
        ok, detail = X12Adapter().test_connection(connector)
        assert not ok and "credentials" in detail


# test_connection --------------------------------------------------------------------------------------------


def test_test_connection_reaches_the_clearinghouse_host(rcm: RcmSimulator) -> None:
    ok, detail = X12Adapter().test_connection(_outbound(f"{rcm.url}/x12/837"))
    assert ok and f"127.0.0.1:{rcm.port}" in detail
    assert rcm.requests["POST /x12/837"] == 0  # nothing was sent
    ok, detail = X12Adapter().test_connection(_outbound("http://127.0.0.1:9/x12/837"))
    assert not ok and "does not accept connections" in detail


def test_test_connection_of_a_folder_drop_lists_it(tmp_path: Path) -> None:
    connector = _outbound(
        "", transport="file", file={"destination": {"type": "folder", "path": str(tmp_path)}}
    )
    assert X12Adapter().test_connection(connector) == (True, f"folder:{tmp_path} lists 0 files")
    connector.config["file"]["destination"]["path"] = str(tmp_path / "missing")
    assert not X12Adapter().test_connection(connector)[0]
