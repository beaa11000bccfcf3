"""The workflows HealthSync runs, declared in code: steps, transitions, SLA per step, latency class, criticality.

The run page draws a run's timeline from its workflow's steps, and `workflows.sla.sla_check()` reads each step's
SLA to raise an exception for a run that has waited too long in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta


@dataclass(frozen=True)
class Step:
    """One step of a workflow: what it is called, what may follow it and how long a run may wait after it."""

    name: str
    label: str
    next: tuple[str, ...] = ()
    # How long a run may stay in this step before the SLA check raises an exception; None: no limit.
    sla: timedelta | None = None
    system: str = ""


@dataclass(frozen=True)
class Workflow:
    """A business process across systems, keyed by one business key (encounter, PO, period, item)."""

    code: str
    label: str
    business_key: str
    latency: str  # "real-time" or "batch"
    criticality: str  # "high", "medium", "low"
    recovery: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def step(self, name: str) -> Step | None:
        return next((step for step in self.steps if step.name == name), None)

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]

    def allows(self, current: str, following: str) -> bool:
        """Whether `following` may come after `current` (an unknown or empty current step allows anything)."""
        step = self.step(current)
        return step is None or following in step.next


HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

DISCHARGE_TO_BILL = Workflow(
    code="discharge_to_bill",
    label="Discharge to bill to cash",
    business_key="encounter",
    latency="real-time",
    criticality="high",
    recovery="Fix the account from the exception queue and retry; deliveries are idempotent.",
    steps=(
        Step("admitted", "Admitted", ("charges_posted", "discharged"), system="EHR"),
        Step("charges_posted", "Charges posted", ("discharged", "late_charge_posted"), system="EHR"),
        Step(
            "discharged",
            "Discharged",
            ("documentation_completed", "coding_completed", "claim_ready", "discharge_cancelled"),
            sla=3 * DAY,
            system="EHR",
        ),
        Step("discharge_cancelled", "Discharge cancelled", ("discharged", "claim_voided"), system="EHR"),
        Step("claim_voided", "Claim voided (frequency 8)", ("void_accepted", "discharged"), system="RCM"),
        Step("void_accepted", "Void accepted by the payer", ("discharged",), system="RCM"),
        Step("documentation_completed", "Documentation complete", ("coding_completed",), sla=2 * DAY),
        Step("coding_completed", "Coding complete", ("bill_hold_released", "claim_ready"), sla=2 * DAY),
        Step("bill_hold_released", "Bill hold released", ("claim_ready",), sla=DAY),
        Step("claim_ready", "Claim ready", ("claim_submitted", "accrual_posted"), sla=4 * HOUR, system="RCM"),
        Step("accrual_posted", "Accrual posted", ("claim_submitted",), system="ERP"),
        Step(
            "claim_submitted",
            "Claim submitted",
            ("claim_accepted", "claim_rejected"),
            sla=3 * DAY,
            system="RCM",
        ),
        Step(
            "late_charge_posted", "Late charge posted", ("corrected_claim_submitted",), sla=DAY, system="EHR"
        ),
        Step("corrected_claim_submitted", "Corrected claim submitted", ("claim_accepted",), system="RCM"),
        Step("claim_accepted", "Claim accepted", ("paid", "denied"), sla=30 * DAY, system="RCM"),
        Step("claim_rejected", "Claim rejected", ("claim_submitted",), system="RCM"),
        Step("paid", "Paid", ("cash_posted",), sla=DAY, system="RCM"),
        Step("denied", "Denied", ("claim_submitted",), system="RCM"),
        Step("cash_posted", "Cash posted", (), system="ERP"),
    ),
)

PROCURE_TO_PAY = Workflow(
    code="procure_to_pay",
    label="Procure to pay",
    business_key="purchase order",
    latency="real-time",
    criticality="medium",
    recovery="Correct the invoice or receipt and retry the match; the ERP posting is keyed by invoice.",
    steps=(
        Step("po_approved", "PO approved", ("po_posted", "received"), system="ERP"),
        Step("po_posted", "PO sent to the ERP", ("received",), system="ERP"),
        Step("received", "Goods received", ("invoice_received",), sla=14 * DAY, system="ERP"),
        Step("invoice_received", "Invoice received", ("invoice_matched",), sla=DAY, system="ERP"),
        Step("invoice_matched", "Invoice matched", ("invoice_posted",), sla=DAY),
        Step("invoice_posted", "Invoice posted", (), system="ERP"),
    ),
)

LABOUR_ALLOCATION = Workflow(
    code="labour_allocation",
    label="Labour cost allocation",
    business_key="payroll period",
    latency="batch",
    criticality="medium",
    recovery="Fix the payroll file or the allocation rules and rerun the period; a rerun posts nothing twice.",
    steps=(
        Step("payroll_received", "Payroll file received", ("payroll_read",), sla=DAY, system="Payroll"),
        Step("payroll_read", "Payroll file read", ("allocated",), system="Payroll"),
        Step("allocated", "Allocated to cost centres", ("journal_posted",), sla=HOUR),
        Step("journal_posted", "Journal posted", (), system="ERP"),
    ),
)

INVENTORY_REPLENISHMENT = Workflow(
    code="inventory_replenishment",
    label="Inventory replenishment",
    business_key="item at location",
    latency="real-time",
    criticality="medium",
    recovery="Adjust the par level or retry the PO; usage feeds are deduplicated by feed id.",
    steps=(
        Step("usage_recorded", "Usage recorded", ("requisitioned",)),
        Step("requisitioned", "Requisition raised", ("po_posted",), sla=DAY),
        Step("po_posted", "PO sent to the ERP", ("usage_recorded",), system="ERP"),
    ),
)

REMITTANCE = Workflow(
    code="remittance",
    label="Remittance posting",
    business_key="payment trace number",
    latency="real-time",
    criticality="high",
    recovery="Retry the cash posting; the ERP sees the same external reference.",
    steps=(
        Step("received", "Remittance received", ("posted",), sla=2 * DAY, system="RCM"),
        Step("posted", "Cash posted", (), system="ERP"),
    ),
)

WORKFLOWS: dict[str, Workflow] = {
    wf.code: wf
    for wf in (DISCHARGE_TO_BILL, PROCURE_TO_PAY, LABOUR_ALLOCATION, INVENTORY_REPLENISHMENT, REMITTANCE)
}


def workflow(code: str) -> Workflow | None:
    return WORKFLOWS.get(code)


# How long an exception of each kind may stay open before the queue shows it overdue (when it has no own due).
EXCEPTION_SLA: dict[str, timedelta] = {
    "missing_data": DAY,
    "mapping_failed": 4 * HOUR,
    "schema_invalid": 4 * HOUR,
    "destination_rejected": DAY,
    "destination_down": 4 * HOUR,
    "sla_breached": DAY,
    "mismatch": 2 * DAY,
}
