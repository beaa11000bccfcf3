"""Reads the X12 adapter shares: which payer claim control number (ICN) a replacement or void must name."""

from __future__ import annotations

# The payer's answers that name the claim it holds for an account, with its ICN.
ICN_EVENTS = ("claim.accepted", "claim.paid", "claim.denied")
REPLACING = ("7", "8")


def payer_claim_control_number(patient_control_number: str, *, source: str = "") -> str:
    """The payer's ICN of the claim it holds for this account now; "" while no answer has named one.

    That is the ICN of the latest 277CA or 835 about the account (`source`: the RCM system's code), leaving
    out a void's own acknowledgement (claim frequency 8) and any ICN a replacement or void we sent already took
    back. Why not the workflow's claim id: over X12 that is our batch id, which the payer never echoes.
    """
    from healthsync.choices import DeliveryStatus
    from healthsync.models import CanonicalEvent, Delivery

    if not patient_control_number:
        return ""
    taken_back = {
        str((d or {}).get("replaces_icn") or "")
        for d in Delivery.objects.filter(
            business_key=patient_control_number,
            status=DeliveryStatus.SUCCEEDED,
            payload__claim_frequency__in=REPLACING,
        ).values_list("response", flat=True)
    }
    events = CanonicalEvent.objects.filter(subject=patient_control_number, type__in=ICN_EVENTS)
    if source:
        events = events.filter(source=source)
    for data in events.order_by("-recorded_at").values_list("data", flat=True)[:50]:
        icn = str((data or {}).get("payer_claim_control_number") or "")
        if not icn or str((data or {}).get("claim_frequency") or "") == "8":
            continue
        return "" if icn in taken_back else icn
    return ""
