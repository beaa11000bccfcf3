"""Building 837I (005010X223A2) and 837P (005010X222A1) claims from the claim the workflow sends to the RCM.

The claim dict is `workflows.discharge_to_bill.claim_payload(run)`: patient_control_number, claim_frequency,
patient {mrn, name, birth_date, sex}, payer {id, name, policy_number, group_number}, encounter {patient_class,
admitted_at, discharged_at, disposition, attending {id, name}, financial_class}, diagnoses [{code, type}],
lines [{charge_id, chargemaster_code, cpt, quantity, amount, service_date}], total_charges.

What the claim does not carry (submitter, receiver, billing provider, addresses) comes from an `Envelope`,
i.e. the connector's config. One claim makes one interchange (ISA/GS/ST … SE/GE/IEA) whose control numbers
the caller chooses, so that a retry of the same delivery sends the same numbers.

A replacement (claim_frequency 7) or void (8) must name the claim it replaces: REF*F8 carries the payer's
claim control number (the ICN from the 277CA REF*1K or the 835 CLP07), read from the claim's
`payer_claim_control_number`.

Choices worth knowing: CLM02 is the sum of the service lines actually sent (credit lines are netted into
nothing: a claim line cannot be negative, so non-positive lines are left out); ICD-10 codes lose their dot;
an attending id that is not an NPI goes in REF*G2 rather than NM109.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

INSTITUTIONAL = "837I"
PROFESSIONAL = "837P"
VERSIONS = {INSTITUTIONAL: "005010X223A2", PROFESSIONAL: "005010X222A1"}
FREQUENCIES = {"1", "7", "8"}  # original, replacement, void
# Element, component, segment and repetition separators used in everything we write.
ELEMENT, COMPONENT, SEGMENT, REPETITION = "*", ":", "~", "^"
_UNSAFE = re.compile(r"[*:~^>|\r\n\t]|[^\x20-\x7e]")
_NPI = re.compile(r"^\d{10}$")


class X12BuildError(ValueError):
    """The claim lacks what an 837 needs (a service line, a diagnosis, a payer); names the field."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Party:
    """A submitter, receiver or billing provider as the 837 names them."""

    name: str
    id: str
    tax_id: str = ""
    address: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    taxonomy: str = ""
    contact_name: str = ""
    phone: str = ""


@dataclass(frozen=True)
class Envelope:
    """Who sends to whom and how: interchange ids, usage (T test / P production), the billing provider."""

    sender_id: str = "HEALTHSYNC"
    receiver_id: str = "RCMSIM"
    sender_qualifier: str = "ZZ"
    receiver_qualifier: str = "ZZ"
    usage: str = "T"
    submitter: Party = field(
        default_factory=lambda: Party("HEALTHSYNC", "HEALTHSYNC", contact_name="BILLING", phone="5555550100")
    )
    receiver: Party = field(default_factory=lambda: Party("RCM SIMULATOR", "RCMSIM"))
    billing_provider: Party = field(
        default_factory=lambda: Party(
            "GENERAL HOSPITAL",
            "1234567893",
            tax_id="123456789",
            address="1 HOSPITAL WAY",
            city="SPRINGFIELD",
            state="IL",
            postal_code="627010001",
            taxonomy="282N00000X",
        )
    )
    # Claim filing indicator (SBR09) by financial class; CI (commercial) otherwise. 5010 dropped 09 (self-pay):
    # ZZ (mutually defined) is what the guides leave for it.
    filing_indicators: dict[str, str] = field(
        default_factory=lambda: {"MCR": "MB", "MCD": "MC", "SP": "ZZ", "COM": "CI"}
    )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Envelope:
        """An envelope from a connector's `x12` config block; absent keys keep the defaults."""
        default = cls()
        parties = {}
        for key in ("submitter", "receiver", "billing_provider"):
            value = config.get(key)
            if isinstance(value, dict):
                base = getattr(default, key).__dict__ | {k: str(v) for k, v in value.items()}
                parties[key] = Party(**{k: base[k] for k in Party.__dataclass_fields__})
        scalars = {
            key: str(config[key])
            for key in ("sender_id", "receiver_id", "sender_qualifier", "receiver_qualifier", "usage")
            if key in config
        }
        filing = config.get("filing_indicators")
        extra: dict[str, Any] = {"filing_indicators": dict(filing)} if isinstance(filing, dict) else {}
        return cls(**scalars, **parties, **extra)


def validate_envelope_config(config: Any) -> list[str]:
    """Problems with an `x12` config block, in words a person can act on."""
    if config is None:
        return []
    if not isinstance(config, dict):
        return ["x12 must be an object"]
    errors = []
    for key in ("sender_id", "receiver_id"):
        value = config.get(key)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 15):
            errors.append(f"x12.{key} must be 1 to 15 characters")
    if config.get("usage", "T") not in ("T", "P"):
        errors.append("x12.usage must be T (test) or P (production)")
    provider = config.get("billing_provider")
    if provider is not None:
        if not isinstance(provider, dict):
            errors.append("x12.billing_provider must be an object")
        elif "id" in provider and not _NPI.match(str(provider["id"])):
            errors.append("x12.billing_provider.id must be a 10-digit NPI")
    return errors


def build_837(
    claim: dict[str, Any],
    *,
    kind: str = INSTITUTIONAL,
    envelope: Envelope | None = None,
    control_number: int = 1,
    now: datetime | None = None,
) -> str:
    """One interchange carrying `claim` as an 837I or 837P, segments ending in ``~\\n``."""
    if kind not in VERSIONS:
        raise X12BuildError(f"Unknown claim kind {kind!r}: use 837I or 837P", field="kind")
    if not 0 < control_number < 1_000_000_000:
        raise X12BuildError("The interchange control number must be 1 to 999999999", field="control_number")
    env = envelope or Envelope()
    now = timezone.localtime(now or timezone.now())
    version = VERSIONS[kind]
    icn = f"{control_number:09d}"
    body = _transaction(claim, kind=kind, env=env, now=now, st_control=f"{control_number % 10000:04d}")
    segments = [
        _seg(
            "ISA",
            "00",
            " " * 10,
            "00",
            " " * 10,
            env.sender_qualifier.ljust(2)[:2],
            _clean(env.sender_id).ljust(15)[:15],
            env.receiver_qualifier.ljust(2)[:2],
            _clean(env.receiver_id).ljust(15)[:15],
            now.strftime("%y%m%d"),
            now.strftime("%H%M"),
            REPETITION,
            "00501",
            icn,
            "0",
            env.usage,
            COMPONENT,
        ),
        _seg(
            "GS",
            "HC",
            _clean(env.sender_id),
            _clean(env.receiver_id),
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
    return "".join(segment + SEGMENT + "\n" for segment in segments)


def _transaction(
    claim: dict[str, Any], *, kind: str, env: Envelope, now: datetime, st_control: str
) -> list[str]:
    institutional = kind == INSTITUTIONAL
    pcn = _clean(str(claim.get("patient_control_number") or ""))
    if not pcn:
        raise X12BuildError("The claim has no patient control number", field="patient_control_number")
    frequency = str(claim.get("claim_frequency") or "1")
    if frequency not in FREQUENCIES:
        raise X12BuildError(f"Claim frequency {frequency!r} is not 1, 7 or 8", field="claim_frequency")
    original_icn = _clean(str(claim.get("payer_claim_control_number") or ""))[:50]
    if frequency in ("7", "8") and not original_icn:
        raise X12BuildError(
            f"A {'void' if frequency == '8' else 'replacement'} claim needs the payer's claim control number "
            "of the claim it replaces (REF*F8)",
            field="payer_claim_control_number",
        )
    payer = claim.get("payer") or {}
    if not payer.get("id"):
        raise X12BuildError("The claim has no payer id", field="payer.id")
    patient = claim.get("patient") or {}
    encounter = claim.get("encounter") or {}
    diagnoses = [d for d in claim.get("diagnoses") or [] if isinstance(d, dict) and d.get("code")]
    if not diagnoses:
        raise X12BuildError("The claim has no diagnosis", field="diagnoses")
    lines = _service_lines(claim, encounter)
    if not lines:
        raise X12BuildError("The claim has no billable service line", field="lines")
    total = sum((line["amount"] for line in lines), Decimal("0"))
    patient_class = str(encounter.get("patient_class") or "I").upper()
    admitted = _datetime(encounter.get("admitted_at"))
    discharged = _datetime(encounter.get("discharged_at"))
    first_service = min(line["date"] for line in lines)
    last_service = max(line["date"] for line in lines)
    provider = env.billing_provider
    family, given = _split_name(str(patient.get("name") or ""))
    member_id = _clean(str(payer.get("policy_number") or patient.get("mrn") or pcn))

    out = [
        _seg("ST", "837", st_control, VERSIONS[kind]),
        _seg("BHT", "0019", "00", pcn[:30], now.strftime("%Y%m%d"), now.strftime("%H%M"), "CH"),
        _seg("NM1", "41", "2", _clean(env.submitter.name), "", "", "", "", "46", _clean(env.submitter.id)),
        _seg(
            "PER", "IC", _clean(env.submitter.contact_name or "BILLING"), "TE", _digits(env.submitter.phone)
        ),
        _seg("NM1", "40", "2", _clean(env.receiver.name), "", "", "", "", "46", _clean(env.receiver.id)),
        _seg("HL", "1", "", "20", "1"),
    ]
    if provider.taxonomy:
        out.append(_seg("PRV", "BI", "PXC", _clean(provider.taxonomy)))
    out += [
        _seg("NM1", "85", "2", _clean(provider.name), "", "", "", "", "XX", _clean(provider.id)),
        _seg("N3", _clean(provider.address)),
        _seg("N4", _clean(provider.city), _clean(provider.state), _digits(provider.postal_code)),
        _seg("REF", "EI", _digits(provider.tax_id)),
        _seg("HL", "2", "1", "22", "0"),
        _seg(
            "SBR",
            "P",
            "18",
            _clean(str(payer.get("group_number") or "")),
            "",
            "",
            "",
            "",
            "",
            env.filing_indicators.get(str(encounter.get("financial_class") or ""), "CI"),
        ),
        _seg("NM1", "IL", "1", family, given, "", "", "", "MI", member_id),
    ]
    address = patient.get("address") if isinstance(patient.get("address"), dict) else None
    if address:
        out.append(_seg("N3", _clean(str(address.get("line") or ""))))
        out.append(
            _seg(
                "N4",
                _clean(str(address.get("city") or "")),
                _clean(str(address.get("state") or "")),
                _digits(str(address.get("postal_code") or "")),
            )
        )
    birth = _date(patient.get("birth_date"))
    if birth:
        sex = str(patient.get("sex") or "U").upper()[:1]
        out.append(_seg("DMG", "D8", birth.strftime("%Y%m%d"), sex if sex in ("M", "F") else "U"))
    out.append(
        _seg(
            "NM1",
            "PR",
            "2",
            _clean(str(payer.get("name") or payer["id"]))[:60],
            "",
            "",
            "",
            "",
            "PI",
            _clean(str(payer["id"])),
        )
    )
    if institutional:
        facility_code = "11" if patient_class == "I" else "13"
        clm = _seg(
            "CLM",
            pcn[:38],
            _amount(total),
            "",
            "",
            f"{facility_code}{COMPONENT}A{COMPONENT}{frequency}",
            "",
            "A",
            "Y",
            "Y",
        )
        out.append(clm)
        if patient_class == "I" and discharged:
            out.append(_seg("DTP", "096", "TM", discharged.strftime("%H%M")))
        start = (admitted.date() if admitted else first_service) if patient_class == "I" else first_service
        end = (discharged.date() if discharged else last_service) if patient_class == "I" else last_service
        start, end = min(start, end), max(start, end)
        out.append(_seg("DTP", "434", "RD8", f"{start:%Y%m%d}-{end:%Y%m%d}"))
        if patient_class == "I" and admitted:
            out.append(_seg("DTP", "435", "DT", admitted.strftime("%Y%m%d%H%M")))
            # CL101 admission type: 1 emergency when the encounter says so (PV1-4 E), else 3 elective.
            admission = "1" if str(encounter.get("admission_type") or "").upper() == "E" else "3"
            out.append(_seg("CL1", admission, "1", _status(encounter)))
        else:
            # Admission type and source are for inpatient stays; the patient status goes on every claim.
            out.append(_seg("CL1", "", "", _status(encounter)))
        if original_icn:
            out.append(_seg("REF", "F8", original_icn))
        out += _hi_institutional(diagnoses, inpatient=patient_class == "I")
        out += _attending(encounter.get("attending") or {})
        for number, line in enumerate(lines, start=1):
            procedure = f"HC{COMPONENT}{line['cpt']}" if line["cpt"] else ""
            out += [
                _seg("LX", str(number)),
                _seg("SV2", line["revenue_code"], procedure, _amount(line["amount"]), "UN", line["quantity"]),
                _seg("DTP", "472", "D8", line["date"].strftime("%Y%m%d")),
            ]
    else:
        place = {"I": "21", "E": "23", "O": "22"}.get(patient_class, "11")
        out.append(
            _seg(
                "CLM",
                pcn[:38],
                _amount(total),
                "",
                "",
                f"{place}{COMPONENT}B{COMPONENT}{frequency}",
                "Y",
                "A",
                "Y",
                "Y",
            )
        )
        if original_icn:
            out.append(_seg("REF", "F8", original_icn))
        codes = [_icd(d["code"]) for d in _ordered(diagnoses)][:12]
        out.append(_seg("HI", *[f"{'ABK' if i == 0 else 'ABF'}{COMPONENT}{c}" for i, c in enumerate(codes)]))
        pointers = COMPONENT.join(str(i) for i in range(1, min(len(codes), 4) + 1))
        for number, line in enumerate(lines, start=1):
            code = line["cpt"] or "99499"  # unlisted evaluation and management service
            out += [
                _seg("LX", str(number)),
                _seg(
                    "SV1",
                    f"HC{COMPONENT}{code}",
                    _amount(line["amount"]),
                    "UN",
                    line["quantity"],
                    "",
                    "",
                    pointers,
                ),
                _seg("DTP", "472", "D8", line["date"].strftime("%Y%m%d")),
            ]
    out.append(_seg("SE", str(len(out) + 1), st_control))
    return out


def _service_lines(claim: dict[str, Any], encounter: dict[str, Any]) -> list[dict[str, Any]]:
    fallback = _datetime(encounter.get("discharged_at")) or _datetime(encounter.get("admitted_at"))
    lines = []
    for raw in claim.get("lines") or []:
        if not isinstance(raw, dict):
            continue
        try:
            amount = Decimal(str(raw.get("amount") or "0"))
            quantity = Decimal(str(raw.get("quantity") or "1"))
        except InvalidOperation:
            raise X12BuildError(
                f"Charge {raw.get('charge_id', '')} has an amount or quantity that is not a number",
                field="lines",
            ) from None
        if amount <= 0:
            continue
        served = _datetime(raw.get("service_date"))
        when = (
            served.date()
            if served
            else (_date(raw.get("service_date")) or (fallback.date() if fallback else None))
        )
        if when is None:
            raise X12BuildError(f"Charge {raw.get('charge_id', '')} has no service date", field="lines")
        chargemaster = _digits(str(raw.get("chargemaster_code") or ""))
        lines.append(
            {
                "amount": amount.quantize(Decimal("0.01")),
                "quantity": _number(quantity if quantity > 0 else Decimal("1")),
                "cpt": _clean(str(raw.get("cpt") or ""))[:5],
                # Chargemaster codes here lead with the UB-04 revenue centre (300001 → 0300).
                "revenue_code": ("0" + chargemaster[:3]) if len(chargemaster) >= 3 else "0300",
                "date": when,
            }
        )
    return lines


def _hi_institutional(diagnoses: list[dict[str, Any]], *, inpatient: bool) -> list[str]:
    ordered = _ordered(diagnoses)
    principal = _icd(ordered[0]["code"])
    out = [_seg("HI", f"ABK{COMPONENT}{principal}")]
    if inpatient:
        admitting = next((d for d in diagnoses if str(d.get("type", "")).upper() == "A"), ordered[0])
        out.append(_seg("HI", f"ABJ{COMPONENT}{_icd(admitting['code'])}"))
    others = [_icd(d["code"]) for d in ordered[1:]][:12]
    if others:
        out.append(_seg("HI", *[f"ABF{COMPONENT}{code}" for code in others]))
    return out


def _attending(attending: dict[str, Any]) -> list[str]:
    ident = _clean(str(attending.get("id") or ""))
    if not ident and not attending.get("name"):
        return []
    family, given = _split_name(str(attending.get("name") or ""))
    if _NPI.match(ident):
        return [_seg("NM1", "71", "1", family or "UNKNOWN", given, "", "", "", "XX", ident)]
    out = [_seg("NM1", "71", "1", family or "UNKNOWN", given)]
    if ident:
        out.append(_seg("REF", "G2", ident))
    return out


def _ordered(diagnoses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Final diagnoses first (the principal is the first final one), then the others in their order.
    finals = [d for d in diagnoses if str(d.get("type", "F")).upper() in ("F", "")]
    rest = [d for d in diagnoses if d not in finals]
    seen: set[str] = set()
    out = []
    for d in finals + rest:
        code = _icd(d["code"])
        if code and code not in seen:
            seen.add(code)
            out.append(d)
    return out


def _status(encounter: dict[str, Any]) -> str:
    disposition = str(encounter.get("disposition") or "")
    return disposition if re.fullmatch(r"\d{2}", disposition) else "01"


def _seg(seg_id: str, *elements: str) -> str:
    values = list(elements)
    while values and values[-1] == "":
        values.pop()
    return ELEMENT.join([seg_id, *values])


def _clean(value: str) -> str:
    return _UNSAFE.sub("", value.upper()).strip()


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def _icd(code: str) -> str:
    return _clean(str(code)).replace(".", "")


def _amount(value: Decimal) -> str:
    return _number(value.quantize(Decimal("0.01")))


def _number(value: Decimal) -> str:
    # X12 decimals carry no trailing zeros or needless point: 100.50 → 100.5, 2.00 → 2.
    text = format(value.normalize(), "f")
    return text


def _split_name(name: str) -> tuple[str, str]:
    parts = _clean(name).split()
    if not parts:
        return "UNKNOWN", ""
    if len(parts) == 1:
        return parts[0], ""
    return parts[-1], " ".join(parts[:-1])


def _datetime(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(str(value))
    if parsed is None:
        return None
    return timezone.localtime(parsed) if timezone.is_aware(parsed) else parsed


def _date(value: Any) -> date | None:
    if not value:
        return None
    text = str(value)
    try:
        return parse_date(text[:10])
    except ValueError:
        return None
