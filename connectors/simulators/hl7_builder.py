"""Build realistic HL7 v2.5.1 ADT^A01, ADT^A03 and DFT^P03 messages for tests and the demo.

Stable API (the demo uses it):

    adt_a01(**fields) -> str      admission
    adt_a03(**fields) -> str      discharge; include_insurance / include_diagnosis / include_attending /
                                  include_financial_class=False build the incomplete discharges billing stops on
    dft_p03(**fields) -> str      charges; charges=[{"charge_id", "code", "description", "quantity", "amount",
                                  "service_date", "posting_date", "cpt", "department", "type"}, …]

    adt_a13(**fields) -> str      cancel discharge (the account goes back to admitted)
    bar_p05(**fields) -> str      account update carrying final coding: DG1, DRG, PR1 (coding.completed)
    mdm_t02(**fields) -> str      signed document (documentation.completed): TXA type, id, signer, time

Every builder accepts any key of DEFAULTS (encounter_id, mrn, family_name, admit_time, payer_id, …) and
`control_id` (MSH-10); without one each call gets a fresh unique control id. Segments end with CR; values are
escaped. The result is text; encode it as UTF-8 (MSH-18 says so) before sending it over MLLP.
"""

from __future__ import annotations

import uuid
from typing import Any

from connectors.hl7v2.reader import escape

DEFAULTS: dict[str, Any] = {
    "sending_application": "EPIC",
    "sending_facility": "GENHOSP",
    "receiving_application": "HEALTHSYNC",
    "receiving_facility": "GENHOSP",
    "message_time": "20260103120500",
    "encounter_id": "V1001",
    "account_number": "ACC1001",
    "mrn": "MRN12345",
    "assigning_authority": "GENHOSP",
    "family_name": "Doe",
    "given_name": "Jane",
    "birth_date": "19800214",
    "sex": "F",
    "patient_class": "I",
    "point_of_care": "4WEST",
    "room": "401",
    "bed": "1",
    "facility": "GENHOSP",
    "admission_type": "E",
    "attending_id": "1234567890",
    "attending_family": "Smith",
    "attending_given": "John",
    "hospital_service": "MED",
    "financial_class": "COM",
    "disposition": "01",
    "admit_time": "20260101083000",
    "discharge_time": "20260103120000",
    "diagnoses": [("I10", "Essential (primary) hypertension", "F"), ("E11.9", "Type 2 diabetes", "F")],
    "plan_id": "AET-PPO",
    "payer_id": "AETNA01",
    "payer_name": "Aetna",
    "group_number": "GRP100",
    "policy_number": "POL123456",
    # Coding (BAR^P05) and documentation (MDM^T02).
    "procedures": [("0DTJ4ZZ", "Resection of appendix", "20260102093000")],
    "drg": "343",
    "coded_at": "20260104100000",
    "document_type": "DS",
    "document_id": "DOC1001",
    "signed_by": "1234567890",
    "signed_at": "20260103180000",
    "cancel_time": "20260103130000",
}

DEFAULT_CHARGES: list[dict[str, Any]] = [
    {
        "charge_id": "CHG1001",
        "code": "300001",
        "description": "Room and board, semi-private",
        "quantity": "2",
        "amount": "3000.00",
        "unit_amount": "1500.00",
        "cpt": "",
        "department": "MED",
        "type": "CG",
    },
    {
        "charge_id": "CHG1002",
        "code": "450010",
        "description": "Comprehensive metabolic panel",
        "quantity": "1",
        "amount": "250.50",
        "unit_amount": "250.50",
        "cpt": "80053",
        "department": "LAB",
        "type": "CG",
    },
]


def new_control_id() -> str:
    """A unique MSH-10 (20 characters, the v2.5.1 field length)."""
    return uuid.uuid4().hex[:20].upper()


def _e(value: Any) -> str:
    return escape(str(value)) if value is not None else ""


def _values(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = (
        set(fields)
        - set(DEFAULTS)
        - {
            "control_id",
            "charges",
            "include_insurance",
            "include_diagnosis",
            "include_attending",
            "include_financial_class",
            "include_discharge_time",
            "include_drg",
        }
    )
    if unknown:
        raise TypeError(f"unknown HL7 builder fields: {', '.join(sorted(unknown))}")
    values = {**DEFAULTS, **fields}
    values["control_id"] = fields.get("control_id") or new_control_id()
    return values


def _msh(v: dict[str, Any], message_type: str, structure: str) -> str:
    return "|".join(
        [
            "MSH",
            "^~\\&",
            _e(v["sending_application"]),
            _e(v["sending_facility"]),
            _e(v["receiving_application"]),
            _e(v["receiving_facility"]),
            _e(v["message_time"]),
            "",
            f"{message_type}^{structure}",
            _e(v["control_id"]),
            "P",
            "2.5.1",
            "",
            "",
            "AL",
            "NE",
            "",
            "UNICODE UTF-8",
        ]
    )


def _evn(v: dict[str, Any], trigger: str, when: str) -> str:
    return f"EVN|{trigger}|{_e(when)}"


def _pid(v: dict[str, Any]) -> str:
    fields = [""] * 19
    fields[1] = "1"
    fields[3] = f"{_e(v['mrn'])}^^^{_e(v['assigning_authority'])}^MR"
    fields[5] = f"{_e(v['family_name'])}^{_e(v['given_name'])}"
    fields[7] = _e(v["birth_date"])
    fields[8] = _e(v["sex"])
    fields[18] = _e(v["account_number"])
    return "PID|" + "|".join(fields[1:])


def _pv1(v: dict[str, Any], *, attending: bool, financial_class: bool, discharge: bool) -> str:
    fields = [""] * 46
    fields[1] = "1"
    fields[2] = _e(v["patient_class"])
    fields[3] = f"{_e(v['point_of_care'])}^{_e(v['room'])}^{_e(v['bed'])}^{_e(v['facility'])}"
    fields[4] = _e(v["admission_type"])
    if attending:
        fields[7] = f"{_e(v['attending_id'])}^{_e(v['attending_family'])}^{_e(v['attending_given'])}^^^^MD"
    fields[10] = _e(v["hospital_service"])
    fields[19] = _e(v["encounter_id"])
    if financial_class:
        fields[20] = _e(v["financial_class"])
    fields[44] = _e(v["admit_time"])
    if discharge:
        fields[36] = _e(v["disposition"])
        fields[45] = _e(v["discharge_time"])
    return "PV1|" + "|".join(fields[1:])


def _dg1(v: dict[str, Any]) -> list[str]:
    segments = []
    for index, diagnosis in enumerate(v["diagnoses"], start=1):
        code, description, kind = (*tuple(diagnosis), "", "", "")[:3]
        segments.append(f"DG1|{index}||{_e(code)}^{_e(description)}^I10|||{_e(kind)}")
    return segments


def _in1(v: dict[str, Any]) -> str:
    fields = [""] * 37
    fields[1] = "1"
    fields[2] = _e(v["plan_id"])
    fields[3] = _e(v["payer_id"])
    fields[4] = _e(v["payer_name"])
    fields[8] = _e(v["group_number"])
    fields[36] = _e(v["policy_number"])
    return "IN1|" + "|".join(fields[1:])


def adt_a01(**fields: Any) -> str:
    """An inpatient admission with patient, visit, diagnoses and insurance."""
    v = _values(fields)
    segments = [
        _msh(v, "ADT^A01", "ADT_A01"),
        _evn(v, "A01", v["admit_time"]),
        _pid(v),
        _pv1(
            v,
            attending=fields.get("include_attending", True),
            financial_class=fields.get("include_financial_class", True),
            discharge=False,
        ),
    ]
    if fields.get("include_diagnosis", True):
        segments += _dg1(v)
    if fields.get("include_insurance", True):
        segments.append(_in1(v))
    return "\r".join(segments) + "\r"


def adt_a03(**fields: Any) -> str:
    """A discharge (PV1-45 set). The include_* flags drop the data billing needs, for exception tests."""
    v = _values(fields)
    discharge_time = v["discharge_time"] if fields.get("include_discharge_time", True) else ""
    segments = [
        _msh(v, "ADT^A03", "ADT_A03"),
        _evn(v, "A03", discharge_time),
        _pid(v),
        _pv1(
            {**v, "discharge_time": discharge_time},
            attending=fields.get("include_attending", True),
            financial_class=fields.get("include_financial_class", True),
            discharge=True,
        ),
    ]
    if fields.get("include_diagnosis", True):
        segments += _dg1(v)
    if fields.get("include_insurance", True):
        segments.append(_in1(v))
    return "\r".join(segments) + "\r"


def dft_p03(**fields: Any) -> str:
    """A detail financial transaction: one FT1 per charge, for the encounter in PV1-19."""
    v = _values(fields)
    charges = fields.get("charges") or DEFAULT_CHARGES
    segments = [
        _msh(v, "DFT^P03", "DFT_P03"),
        _evn(v, "P03", v["message_time"]),
        _pid(v),
        _pv1(v, attending=True, financial_class=True, discharge=False),
    ]
    for index, charge in enumerate(charges, start=1):
        ft1 = [""] * 26
        ft1[1] = str(index)
        ft1[2] = _e(charge.get("charge_id", f"CHG{index}"))
        ft1[4] = _e(charge.get("service_date", v["admit_time"]))
        ft1[5] = _e(charge.get("posting_date", v["message_time"]))
        ft1[6] = _e(charge.get("type", "CG"))
        ft1[7] = f"{_e(charge.get('code', ''))}^{_e(charge.get('description', ''))}"
        ft1[10] = _e(charge.get("quantity", "1"))
        ft1[11] = _e(charge.get("amount", "0.00"))
        ft1[12] = _e(charge.get("unit_amount", ""))
        ft1[13] = _e(charge.get("department", ""))
        ft1[25] = _e(charge.get("cpt", ""))
        segments.append("FT1|" + "|".join(ft1[1:]))
    return "\r".join(segments) + "\r"


def adt_a13(**fields: Any) -> str:
    """A cancel discharge: the visit is back to in-house, PV1-45 empty."""
    v = _values(fields)
    segments = [
        _msh(v, "ADT^A13", "ADT_A01"),
        _evn(v, "A13", v["cancel_time"]),
        _pid(v),
        _pv1(v, attending=True, financial_class=True, discharge=False),
    ]
    return "\r".join(segments) + "\r"


def bar_p05(**fields: Any) -> str:
    """An account update with the final coding: DG1 (type F), DRG and PR1 segments."""
    v = _values(fields)
    segments = [
        _msh(v, "BAR^P05", "BAR_P05"),
        _evn(v, "P05", v["coded_at"]),
        _pid(v),
        _pv1(v, attending=True, financial_class=True, discharge=False),
    ]
    if fields.get("include_diagnosis", True):
        segments += _dg1(v)
    if fields.get("include_drg", True):
        segments.append(f"DRG|{_e(v['drg'])}^^MS-DRG|{_e(v['coded_at'])}")
    for index, procedure in enumerate(v["procedures"], start=1):
        code, description, when = (*tuple(procedure), "", "", "")[:3]
        segments.append(f"PR1|{index}||{_e(code)}^{_e(description)}^I10P||{_e(when)}")
    return "\r".join(segments) + "\r"


def mdm_t02(**fields: Any) -> str:
    """A signed clinical document: TXA-2 type, TXA-4 time, TXA-12 id, TXA-17 status AU, TXA-22 signer."""
    v = _values(fields)
    txa = [""] * 23
    txa[1] = "1"
    txa[2] = _e(v["document_type"])
    txa[12] = _e(v["document_id"])
    txa[17] = "AU"
    txa[4] = _e(v["signed_at"])
    txa[22] = _e(v["signed_by"])
    segments = [
        _msh(v, "MDM^T02", "MDM_T02"),
        _evn(v, "T02", v["signed_at"]),
        _pid(v),
        _pv1(v, attending=True, financial_class=True, discharge=False),
        "TXA|" + "|".join(txa[1:]),
    ]
    return "\r".join(segments) + "\r"
