"""X12 answers from the payer side (999, 277CA, 835) as canonical-event dicts.

    x12_events(raw, claims_by_batch=None) -> list[dict]

Each dict has the CanonicalEvent fields: type, subject, occurred_at (ISO 8601 or ""), idempotency_key,
source_ref, correlation, data. What each transaction becomes:

- 999 (005010X231A1): per AK2 (one transaction set we sent), IK5 A/E → claim.submitted (the clearinghouse took
  it), IK5 R/M/W/X → claim.rejected with the IK3/IK4 errors. A 999 names our GS/ST control numbers, not
  claims: pass `claims_by_batch` ({GS06 control number: [patient control numbers]}) to get one event per
  claim with the claim as subject; otherwise the subject is ``x12-group:<GS06>``.
- 277CA (005010X214): per patient-level STC (the claim, TRN02 = CLM01), category A1/A2 → claim.accepted,
  A3/A4/A6/A7/A8 → claim.rejected.
- 835 (005010X221A1): one remittance.received (subject = TRN02 trace number) and per CLP: CLP02 4 → claim.denied;
  22 → claim.reversed; 1/2/3/19/20/21 → claim.paid when CLP04 > 0, claim.denied when nothing is paid and a
  payer adjustment (CO/PI/OA) says why, else claim.paid (all patient responsibility).

Every claim event's data names the claim twice: `claim_id` (what the payer calls it, CLM01 as echoed) and
`patient_control_number` (the same CLM01: the account the workflow knows it by), with the payer's claim
control number (277CA REF*1K, 835 CLP07) and, where the transaction says it, the claim frequency (277CA
REF*BLT bill type, 835 CLP09): a void's acknowledgement is not the claim it voids.

Idempotency keys come from the interchange (sender + ISA13) and the claim, so the same file read twice
emits nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.x12.reader import Segment, X12Document, X12ParseError, parse

ACCEPTED_CATEGORIES = {"A1", "A2"}
REJECTED_CATEGORIES = {"A3", "A4", "A6", "A7", "A8"}
PROCESSED_STATUSES = {"1", "2", "3", "19", "20", "21"}
DENIAL_GROUPS = {"CO", "PI", "OA"}


def x12_events(
    raw: bytes | str | X12Document, claims_by_batch: Mapping[str, list[str]] | None = None
) -> list[dict]:
    """Canonical-event dicts for a 999, 277CA or 835 interchange; X12ParseError when it cannot be read."""
    doc = raw if isinstance(raw, X12Document) else parse(raw)
    kind = doc.header.message_type
    if kind == "999":
        return _events_999(doc, claims_by_batch or {})
    if kind == "277":
        return _events_277ca(doc)
    if kind == "835":
        return _events_835(doc)
    raise X12ParseError(
        f"Transaction set {kind or '(none)'} carries no claim status: expected 999, 277 or 835",
        segment="ST",
        position=next((s.position for s in doc.segments if s.id == "ST"), None),
    )


def _base(doc: X12Document) -> str:
    return f"x12:{doc.header.sender}:{doc.header.control_id}"


def _event(
    doc: X12Document, event_type: str, subject: str, key: str, occurred: str, data: dict[str, Any]
) -> dict[str, Any]:
    correlation = {"claim": data.get("claim_id", "")} if event_type.startswith("claim.") else {}
    return {
        "type": event_type,
        "subject": subject,
        "occurred_at": occurred,
        "idempotency_key": f"{_base(doc)}:{key}",
        "source_ref": doc.header.control_id,
        "correlation": {k: v for k, v in correlation.items() if v},
        "data": data,
    }


# 999 -------------------------------------------------------------------------------------------------------


def _events_999(doc: X12Document, claims_by_batch: Mapping[str, list[str]]) -> list[dict]:
    gs = doc.all("GS")[0]
    occurred = _x12_datetime(gs.el(4), gs.el(5))
    group = ""
    events: list[dict] = []
    current: dict[str, Any] | None = None
    for seg in doc.segments:
        if seg.id == "AK1":
            group = seg.el(2)
        elif seg.id == "AK2":
            current = {"transaction_set": seg.el(1), "control_number": seg.el(2), "errors": []}
        elif seg.id == "IK3" and current is not None:
            current["errors"].append(
                {"segment": seg.el(1), "position": seg.el(2), "loop": seg.el(3), "code": seg.el(4)}
            )
        elif seg.id == "IK4" and current is not None and current["errors"]:
            current["errors"][-1].setdefault("elements", []).append(
                {"element": seg.el(1, 1), "code": seg.el(3)}
            )
        elif seg.id == "IK5" and current is not None:
            code = seg.el(1)
            accepted = code in ("A", "E")
            claims = list(claims_by_batch.get(group, [])) or [""]
            for claim in claims:
                subject = claim or f"x12-group:{group}"
                data = {
                    "claim_id": claim,
                    "patient_control_number": claim,
                    "group_control_number": group,
                    "transaction_control_number": current["control_number"],
                    "ack_code": code,
                    "syntax_errors": [seg.el(n) for n in range(2, 7) if seg.el(n)],
                    "errors": current["errors"],
                    "reasons": _reasons_999(current["errors"], seg),
                }
                events.append(
                    _event(
                        doc,
                        "claim.submitted" if accepted else "claim.rejected",
                        subject,
                        f"999:{group}:{current['control_number']}:{claim}",
                        occurred,
                        data,
                    )
                )
            current = None
    return events


def _reasons_999(errors: list[dict[str, Any]], ik5: Segment) -> list[str]:
    reasons = [
        f"{e['segment']} at segment {e['position']}: syntax error {e['code']}"
        + "".join(f", element {x['element']} error {x['code']}" for x in e.get("elements", []))
        for e in errors
    ]
    return reasons or [f"transaction error {ik5.el(n)}" for n in range(2, 7) if ik5.el(n)]


# 277CA -----------------------------------------------------------------------------------------------------


def _events_277ca(doc: X12Document) -> list[dict]:
    events: list[dict] = []
    level = ""
    payer = ""
    claim: dict[str, Any] | None = None

    def flush() -> None:
        if claim is None or not claim.get("claim_id") or not claim["statuses"]:
            return
        categories = [s["category"] for s in claim["statuses"]]
        if any(c in REJECTED_CATEGORIES for c in categories):
            event_type = "claim.rejected"
        elif any(c in ACCEPTED_CATEGORIES for c in categories):
            event_type = "claim.accepted"
        else:
            return  # pended or informational categories (A0, A5, P…) change nothing yet
        first = claim["statuses"][0]
        data = {
            "claim_id": claim["claim_id"],
            "patient_control_number": claim["claim_id"],
            "payer": payer,
            "payer_claim_control_number": claim.get("icn", ""),
            "claim_frequency": claim.get("bill_type", "")[-1:],
            "status_category": first["category"],
            "status_code": first["code"],
            "statuses": claim["statuses"],
            "amount": first["amount"],
            "reasons": [
                f"{s['category']}:{s['code']}"
                for s in claim["statuses"]
                if s["category"] not in ACCEPTED_CATEGORIES
            ],
        }
        events.append(
            _event(
                doc,
                event_type,
                claim["claim_id"],
                f"277ca:{claim['claim_id']}:{first['category']}:{first['code']}",
                first["date"],
                data,
            )
        )

    for seg in doc.segments:
        if seg.id == "HL":
            flush()
            claim = None
            level = seg.el(3)
            if level == "PT" or level == "22":
                claim = {"statuses": []}
        elif seg.id == "NM1" and seg.el(1) == "PR":
            payer = seg.el(3)
        elif seg.id == "TRN" and claim is not None and seg.el(1) == "2":
            claim["claim_id"] = seg.el(2)
        elif seg.id == "STC" and claim is not None:
            claim["statuses"].append(
                {
                    "category": seg.el(1, 1),
                    "code": seg.el(1, 2),
                    "entity": seg.el(1, 3),
                    "date": _x12_datetime(seg.el(2)),
                    "action": seg.el(3),
                    "amount": _decimal_text(seg.el(4)),
                }
            )
        elif seg.id == "REF" and claim is not None and seg.el(1) == "1K":
            claim["icn"] = seg.el(2)
        elif seg.id == "REF" and claim is not None and seg.el(1) == "BLT":
            claim["bill_type"] = seg.el(2)
    flush()
    return events


# 835 -------------------------------------------------------------------------------------------------------


def _events_835(doc: X12Document) -> list[dict]:
    bpr = _first(doc, "BPR")
    trn = _first(doc, "TRN")
    if bpr is None or trn is None:
        missing = "BPR" if bpr is None else "TRN"
        raise X12ParseError(f"The 835 has no {missing} segment", segment=missing)
    trace = trn.el(2)
    paid_on = _x12_datetime(bpr.el(16))
    payer_name = payer_id = ""
    claims: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    in_service = False
    for seg in doc.segments:
        if seg.id == "N1" and seg.el(1) == "PR":
            payer_name = seg.el(2)
        elif seg.id == "REF" and seg.el(1) == "2U" and current is None:
            payer_id = seg.el(2)
        elif seg.id == "CLP":
            current = {
                "claim_id": seg.el(1),
                "status": seg.el(2),
                "charge": _decimal(seg.el(3)),
                "paid": _decimal(seg.el(4)),
                "patient_responsibility": _decimal(seg.el(5)),
                "filing_indicator": seg.el(6),
                "payer_claim_control_number": seg.el(7),
                "frequency": seg.el(9),
                "adjustments": [],
            }
            claims.append(current)
            in_service = False
        elif seg.id == "SVC":
            in_service = True
        elif seg.id == "CAS" and current is not None:
            for n in range(2, 20, 3):
                if seg.el(n):
                    current["adjustments"].append(
                        {
                            "group": seg.el(1),
                            "reason": seg.el(n),
                            "amount": _decimal_text(seg.el(n + 1)),
                            "level": "service" if in_service else "claim",
                        }
                    )
        elif seg.id in ("PLB", "SE"):
            current = None
    if not payer_id:
        payer_id = trn.el(3)
    events = [
        _event(
            doc,
            "remittance.received",
            trace,
            f"835:{trace}",
            paid_on,
            {
                "trace_number": trace,
                "amount": _decimal_text(bpr.el(2)),
                "credit_debit": bpr.el(3),
                "payment_method": bpr.el(4),
                "payment_date": paid_on[:10],
                "payer": payer_name,
                "payer_id": payer_id,
                "claim_count": len(claims),
                "claims": [c["claim_id"] for c in claims],
            },
        )
    ]
    for claim in claims:
        event_type = _claim_outcome(claim)
        data = {
            "claim_id": claim["claim_id"],
            "patient_control_number": claim["claim_id"],
            "claim_frequency": claim["frequency"],
            "status_code": claim["status"],
            "charge_amount": str(claim["charge"]),
            "paid_amount": str(claim["paid"]),
            "patient_responsibility": str(claim["patient_responsibility"]),
            "payer_claim_control_number": claim["payer_claim_control_number"],
            "payer": payer_name,
            "payer_id": payer_id,
            "trace_number": trace,
            "payment_date": paid_on[:10],
            "adjustments": claim["adjustments"],
            "reasons": [f"{a['group']}-{a['reason']}" for a in claim["adjustments"]],
        }
        events.append(
            _event(
                doc,
                event_type,
                claim["claim_id"],
                f"835:{trace}:{claim['claim_id']}:{claim['payer_claim_control_number']}:{claim['status']}",
                paid_on,
                data,
            )
        )
    return events


def _claim_outcome(claim: dict[str, Any]) -> str:
    status = claim["status"]
    if status == "4":
        return "claim.denied"
    if status == "22":
        return "claim.reversed"
    if claim["paid"] > 0:
        return "claim.paid"
    if any(a["group"] in DENIAL_GROUPS for a in claim["adjustments"]):
        return "claim.denied"
    return "claim.paid"


def _first(doc: X12Document, seg_id: str) -> Segment | None:
    found = doc.all(seg_id)
    return found[0] if found else None


def _decimal(value: str) -> Decimal:
    try:
        return Decimal(value or "0")
    except InvalidOperation:
        raise X12ParseError(f"{value!r} is not an amount", segment="CLP") from None


def _decimal_text(value: str) -> str:
    try:
        return str(Decimal(value)) if value else ""
    except InvalidOperation:
        return ""


def _x12_datetime(day: str, time: str = "") -> str:
    """CCYYMMDD[ HHMM[SS]] → ISO 8601 (naive: X12 dates carry no zone); "" when absent or not a date."""
    try:
        if len(day) != 8:
            return ""
        when = datetime.strptime(day, "%Y%m%d")
        if len(time) >= 4:
            when = when.replace(hour=int(time[:2]), minute=int(time[2:4]))
        return when.isoformat()
    except ValueError:
        return ""
