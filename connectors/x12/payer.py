"""The payer side of X12, for the RCM simulator and tests: 277CA (005010X214) and 835 (005010X221A1).

    build_277ca(claims, control_number=…)   claims: [{claim_id, amount, accepted, reason, payer_id, payer_name,
                                             member_id, name, icn, bill_type, service_from, service_to}]
    build_835(claims, control_number=…, trace=…)  claims: [{claim_id, amount, paid, patient_responsibility,
                                             status, adjustments [(group, reason, amount)], icn, …}]

Both write what pyx12 accepts as valid, so tests can check every file the simulator serves.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from connectors.x12.build import COMPONENT, REPETITION, SEGMENT, _amount, _clean, _seg, _split_name

PAYEE = {"name": "GENERAL HOSPITAL", "npi": "1234567893"}


def _envelope(
    body: list[str],
    *,
    functional_id: str,
    version: str,
    control_number: int,
    sender: str,
    receiver: str,
    now: datetime,
) -> str:
    icn = f"{control_number:09d}"
    segments = [
        _seg(
            "ISA",
            "00",
            " " * 10,
            "00",
            " " * 10,
            "ZZ",
            sender.ljust(15)[:15],
            "ZZ",
            receiver.ljust(15)[:15],
            now.strftime("%y%m%d"),
            now.strftime("%H%M"),
            REPETITION,
            "00501",
            icn,
            "0",
            "T",
            COMPONENT,
        ),
        _seg(
            "GS",
            functional_id,
            sender,
            receiver,
            now.strftime("%Y%m%d"),
            now.strftime("%H%M"),
            str(control_number),
            "X",
            version,
        ),
        *body,
        _seg("GE", "1", str(control_number)),
        _seg("IEA", "1", icn),
    ]
    return "".join(s + SEGMENT + "\n" for s in segments)


def build_277ca(
    claims: list[dict[str, Any]],
    *,
    control_number: int,
    sender: str = "RCMSIM",
    receiver: str = "HEALTHSYNC",
    batch_ref: str = "",
    now: datetime | None = None,
) -> str:
    """A claim acknowledgement: per claim STC A2:20 (accepted) or A7:<reason> (rejected)."""
    now = timezone.localtime(now or timezone.now())
    today = now.strftime("%Y%m%d")
    st = f"{control_number % 10000:04d}"
    accepted = [c for c in claims if c.get("accepted", True)]
    rejected = [c for c in claims if not c.get("accepted", True)]
    total = sum((Decimal(str(c["amount"])) for c in claims), Decimal(0))
    ok_total = sum((Decimal(str(c["amount"])) for c in accepted), Decimal(0))
    bad_total = total - ok_total
    payer = claims[0] if claims else {}
    body = [
        _seg("ST", "277", st, "005010X214"),
        _seg("BHT", "0085", "08", (batch_ref or str(control_number))[:50], today, now.strftime("%H%M"), "TH"),
        _seg("HL", "1", "", "20", "1"),
        _seg(
            "NM1",
            "PR",
            "2",
            _clean(str(payer.get("payer_name") or "PAYER")),
            "",
            "",
            "",
            "",
            "PI",
            _clean(str(payer.get("payer_id") or "PAYER")),
        ),
        _seg("TRN", "1", str(control_number)),
        _seg("DTP", "050", "D8", today),
        _seg("DTP", "009", "D8", today),
        _seg("HL", "2", "1", "21", "1"),
        _seg("NM1", "41", "2", "HEALTHSYNC", "", "", "", "", "46", receiver),
        _seg("TRN", "2", (batch_ref or str(control_number))[:50]),
        _seg("STC", f"A1{COMPONENT}19{COMPONENT}PR", today, "WQ", _amount(total)),
        _seg("QTY", "90", str(len(accepted))) if accepted else "",
        _seg("QTY", "AA", str(len(rejected))) if rejected else "",
        _seg("AMT", "YU", _amount(ok_total)) if accepted else "",
        _seg("AMT", "YY", _amount(bad_total)) if rejected else "",
        _seg("HL", "3", "2", "19", "1"),
        _seg("NM1", "85", "2", PAYEE["name"], "", "", "", "", "XX", PAYEE["npi"]),
        _seg("TRN", "1", "0"),
        _seg("STC", f"A1{COMPONENT}19{COMPONENT}PR", "", "WQ", _amount(total)),
        _seg("QTY", "QA", str(len(accepted))) if accepted else "",
        _seg("QTY", "QC", str(len(rejected))) if rejected else "",
        _seg("AMT", "YU", _amount(ok_total)) if accepted else "",
        _seg("AMT", "YY", _amount(bad_total)) if rejected else "",
    ]
    body = [s for s in body if s]
    for number, claim in enumerate(claims, start=4):
        family, given = _split_name(str(claim.get("name") or ""))
        good = claim.get("accepted", True)
        status = f"A2{COMPONENT}20{COMPONENT}PR" if good else f"A7{COMPONENT}{claim.get('reason') or '21'}"
        body += [
            _seg("HL", str(number), "3", "PT"),
            _seg(
                "NM1",
                "QC",
                "1",
                family,
                given,
                "",
                "",
                "",
                "MI",
                _clean(str(claim.get("member_id") or "UNKNOWN")),
            ),
            _seg("TRN", "2", str(claim["claim_id"])),
            _seg("STC", status, today, "WQ" if good else "U", _amount(Decimal(str(claim["amount"])))),
        ]
        if good and claim.get("icn"):
            body.append(_seg("REF", "1K", str(claim["icn"])))
        if claim.get("bill_type"):
            # Institutional claims only: facility type + frequency (111 original, 118 void).
            body.append(_seg("REF", "BLT", str(claim["bill_type"])))
        start, end = claim.get("service_from"), claim.get("service_to")
        if not (isinstance(start, date) and isinstance(end, date)):
            start = end = now.date()
        body.append(_seg("DTP", "472", "RD8", f"{start:%Y%m%d}-{end:%Y%m%d}"))
    body.append(_seg("SE", str(len(body) + 1), st))
    return _envelope(
        body,
        functional_id="HN",
        version="005010X214",
        control_number=control_number,
        sender=sender,
        receiver=receiver,
        now=now,
    )


def build_835(
    claims: list[dict[str, Any]],
    *,
    control_number: int,
    trace: str,
    sender: str = "RCMSIM",
    receiver: str = "HEALTHSYNC",
    payer_name: str = "DEMO PAYER",
    payer_id: str = "1999999999",
    now: datetime | None = None,
) -> str:
    """A remittance paying, adjusting or denying `claims` by one check/ACH (BPR02 = the paid total)."""
    now = timezone.localtime(now or timezone.now())
    today = now.strftime("%Y%m%d")
    st = f"{control_number % 10000:04d}"
    paid_total = sum((Decimal(str(c.get("paid", 0))) for c in claims), Decimal(0))
    bpr = (
        _seg("BPR", "I", _amount(paid_total), "C", "CHK", "", "", "", "", "", "", "", "", "", "", "", today)
        if paid_total > 0
        else _seg("BPR", "H", "0", "C", "NON", "", "", "", "", "", "", "", "", "", "", "", today)
    )
    body = [
        _seg("ST", "835", st),
        bpr,
        _seg("TRN", "1", trace, payer_id),
        _seg("DTM", "405", today),
        _seg("N1", "PR", _clean(payer_name)),
        _seg("N3", "1 PAYER PLAZA"),
        _seg("N4", "HARTFORD", "CT", "06101"),
        _seg("PER", "BL", "PROVIDER SERVICES", "TE", "8005550100"),
        _seg("N1", "PE", PAYEE["name"], "XX", PAYEE["npi"]),
    ]
    if claims:
        body.append(_seg("LX", "1"))
    for claim in claims:
        family, given = _split_name(str(claim.get("name") or ""))
        body.append(
            _seg(
                "CLP",
                str(claim["claim_id"]),
                str(claim.get("status", "1")),
                _amount(Decimal(str(claim["amount"]))),
                _amount(Decimal(str(claim.get("paid", 0)))),
                _amount(Decimal(str(claim.get("patient_responsibility", 0))))
                if Decimal(str(claim.get("patient_responsibility", 0)))
                else "",
                str(claim.get("filing_indicator") or "12"),
                str(claim.get("icn") or claim["claim_id"]),
                str(claim.get("facility_code") or "11"),
                str(claim.get("frequency") or "1"),
            )
        )
        by_group: dict[str, list[tuple[str, Decimal]]] = {}
        for group, reason, amount in claim.get("adjustments", []):
            by_group.setdefault(group, []).append((reason, Decimal(str(amount))))
        for group, items in by_group.items():
            elements: list[str] = []
            for reason, amount in items[:6]:
                elements += [reason, _amount(amount), ""]
            body.append(_seg("CAS", group, *elements))
        body.append(
            _seg(
                "NM1",
                "QC",
                "1",
                family,
                given,
                "",
                "",
                "",
                "MI",
                _clean(str(claim.get("member_id") or "UNKNOWN")),
            )
        )
    body.append(_seg("SE", str(len(body) + 1), st))
    return _envelope(
        body,
        functional_id="HP",
        version="005010X221A1",
        control_number=control_number,
        sender=sender,
        receiver=receiver,
        now=now,
    )
