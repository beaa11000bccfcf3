"""What each KPI means, as ../shared/DOMAIN.md defines it and as the facts compute it; the page shows these texts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Definition:
    label: str
    text: str
    target: str = ""


DEFINITIONS: dict[str, Definition] = {
    "discharge_to_bill": Definition(
        "Discharge to final bill",
        "Per account: final bill (claim submitted) time minus discharge time (PV1-45), over accounts discharged in "
        "the window that have been billed. Median and 90th percentile (linear interpolation).",
        "Best shops: bill-hold + 2 days",
    ),
    "claim_lag": Definition(
        "Claim lag",
        "Claim submitted (999 accepted) minus date of service; for inpatient accounts (patient class I) the date of "
        "service is the discharge time. Outpatient accounts are not included yet.",
    ),
    "coding_lag": Definition(
        "Coding lag",
        "Final coded time (coding.completed) minus discharge time, per account discharged in the window.",
        "2-4 days",
    ),
    "bill_hold": Definition(
        "Bill-hold days",
        "Hold release time minus discharge time, per account discharged in the window whose bill hold was released.",
        "3-5 days",
    ),
    "late_charges": Definition(
        "Late charges %",
        "Charges posted after the final bill (flagged late and sent on a corrected claim) ÷ total gross charges, "
        "over accounts discharged in the window (cancelled discharges excluded).",
    ),
    "payment_lag": Definition(
        "Payment lag",
        "First 835 payment time minus claim submission time, per paid account discharged in the window.",
    ),
    "clean_claims": Definition(
        "Clean claim rate",
        "Claims passing all edits with no manual touch ÷ claims accepted into the claim tool (submitted). A claim "
        "is touched when someone fixed its account from the exception queue or the payer rejected it.",
        "≥ 95%",
    ),
    "first_pass": Definition(
        "First-pass yield",
        "Claims paid on first submission (no rejection, denial or corrected claim before the payment) ÷ claims "
        "submitted.",
        "≥ 90%",
    ),
    "denials": Definition(
        "Denial rate",
        "Claims denied on their first remit ÷ claims remitted (paid or denied). A claim paid first and denied "
        "later counts as paid.",
        "5-10%, target < 5%",
    ),
    "dnfb": Definition(
        "DNFB $",
        "Gross charges on accounts discharged in the window and not yet final billed (on hold, uncoded, scrubber "
        "stops); cancelled discharges excluded.",
    ),
    "dnfb_days": Definition(
        "DNFB days",
        "DNFB $ ÷ ADGPSR (average daily gross patient service revenue: gross charges of accounts discharged "
        "in the 90 days before the end of the window ÷ 90).",
        "5-7 automated, executive target < 5",
    ),
    "runs_discharged": Definition("Accounts discharged", "Accounts with a discharge in the window."),
    "runs_billed": Definition(
        "Accounts billed", "Accounts discharged in the window whose claim was submitted."
    ),
    "runs_blocked": Definition(
        "Accounts blocked", "Accounts discharged in the window held by an open exception."
    ),
    "po_cycle": Definition(
        "Purchase-order cycle time",
        "Per purchase order approved in the window: invoice posted to the ERP minus PO approval. Median and p90.",
    ),
    "exceptions": Definition(
        "Exception backlog and money at risk",
        "Open, in-progress and waiting exceptions raised up to the end of the window, by age now (0-1 day, 1-3, "
        "3-7, over 7 days), with the amounts they hold up.",
    ),
    "sla": Definition(
        "SLA compliance",
        "For each workflow: of the SLA-bound steps (declared with the workflow) of runs anchored in the window "
        "(discharge, PO approval, remittance receipt, first step), the share left for a later step within the SLA. "
        "A step not yet left counts as breached once its SLA has passed and is not judged before that.",
    ),
    "close": Definition(
        "Close readiness per period",
        "Per month of the window: accounts discharged in it and not final billed, remittances received in it and "
        "not posted, purchase orders with an invoice received in it and not posted, whether the month's labour "
        "journal is posted, and open exceptions raised in it. Ready when nothing blocks and labour is posted.",
    ),
}
