"""Reads the workflow pages share: close readiness per period and the cross-system timeline of a business key."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, Sum
from django.utils import timezone

from healthsync.choices import RunStatus
from healthsync.models import Delivery, ExceptionItem
from workflows.definitions import WORKFLOWS
from workflows.models import WorkflowRun, WorkflowStep


@dataclass
class CloseItem:
    """One thing still open for the period: what it is, its business key, its amount and a page to go to."""

    what: str
    business_key: str
    amount: Decimal
    run_id: int | None = None
    note: str = ""


@dataclass
class CloseReadiness:
    """What still blocks closing one accounting period."""

    period: str
    dnfb: list[CloseItem] = field(default_factory=list)
    unposted_remits: list[CloseItem] = field(default_factory=list)
    unmatched_invoices: list[CloseItem] = field(default_factory=list)
    labour_posted: bool = False
    open_exceptions: int = 0

    @property
    def ready(self) -> bool:
        return not (self.dnfb or self.unposted_remits or self.unmatched_invoices) and self.labour_posted

    @property
    def dnfb_amount(self) -> Decimal:
        return sum((item.amount for item in self.dnfb), Decimal("0"))


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of a YYYY-MM period in the current time zone; ValueError when malformed."""
    year, month = (int(part) for part in period.split("-"))
    start = date(year, month, 1)
    end = date(year + (month == 12), month % 12 + 1, 1)
    tz = timezone.get_current_timezone()
    return (
        datetime(start.year, start.month, 1, tzinfo=tz),
        datetime(end.year, end.month, 1, tzinfo=tz),
    )


def close_readiness(period: str) -> CloseReadiness:
    """DNFB accounts discharged in the period, remittances received but not posted, invoices not posted."""
    start, end = period_bounds(period)
    result = CloseReadiness(period=period)
    in_period = Q(steps__occurred_at__gte=start, steps__occurred_at__lt=end)
    discharged = (
        WorkflowRun.objects.filter(workflow="discharge_to_bill", steps__step="discharged")
        .filter(in_period)
        .exclude(status=RunStatus.CANCELLED)
        .exclude(steps__step="claim_submitted")
        .distinct()
    )
    for run in discharged.order_by("business_key"):
        result.dnfb.append(
            CloseItem("Discharged, not final billed", run.business_key, run.amount, run.pk, run.step)
        )
    remits = (
        WorkflowRun.objects.filter(workflow="remittance", steps__step="received")
        .filter(in_period)
        .exclude(status=RunStatus.COMPLETED)
        .distinct()
    )
    for run in remits.order_by("business_key"):
        result.unposted_remits.append(
            CloseItem("Remittance not posted", run.business_key, run.amount, run.pk)
        )
    p2p = (
        WorkflowRun.objects.filter(workflow="procure_to_pay", steps__step="invoice_received")
        .filter(in_period)
        .distinct()
    )
    for run in p2p.order_by("business_key"):
        for number, invoice in (run.context.get("invoices") or {}).items():
            if invoice.get("status") != "posted":
                result.unmatched_invoices.append(
                    CloseItem(
                        f"Invoice {invoice.get('status', 'pending')}",
                        f"{run.business_key} / {number}",
                        Decimal(str(invoice.get("amount") or "0")),
                        run.pk,
                    )
                )
    result.labour_posted = WorkflowRun.objects.filter(
        workflow="labour_allocation", business_key=period, steps__step="journal_posted"
    ).exists()
    result.open_exceptions = (
        ExceptionItem.objects.open().filter(created_at__gte=start, created_at__lt=end).count()
    )
    return result


@dataclass
class TimelineEntry:
    """One moment in a business key's life: a step reached, or an effect delivered, with what lies behind it."""

    at: datetime
    workflow: str
    business_key: str
    label: str
    system: str
    note: str = ""
    message_id: int | None = None
    message_type: str = ""
    delivery: Delivery | None = None
    event_type: str = ""


def related_runs(run: WorkflowRun) -> list[WorkflowRun]:
    """The run and the runs it hands off to: an encounter's remittances (by trace number)."""
    runs = [run]
    traces = list((run.context.get("remits") or {}).keys()) if isinstance(run.context, dict) else []
    if traces:
        runs += list(WorkflowRun.objects.filter(workflow="remittance", business_key__in=traces))
    if run.workflow == "remittance":
        runs += (
            list(
                WorkflowRun.objects.filter(
                    workflow="discharge_to_bill", context__remits__has_key=run.business_key
                )
            )
            if _supports_has_key()
            else []
        )
    return runs


def _supports_has_key() -> bool:
    return True


def timeline(run: WorkflowRun) -> list[TimelineEntry]:
    """Every step of the run (and its related runs), with the source message behind each and the deliveries."""
    entries: list[TimelineEntry] = []
    runs = related_runs(run)
    steps = (
        WorkflowStep.objects.filter(run__in=runs)
        .select_related("run", "event__message", "delivery__connector__system")
        .order_by("occurred_at", "id")
    )
    for step in steps:
        definition = WORKFLOWS.get(step.run.workflow)
        declared = definition.step(step.step) if definition else None
        message = step.event.message if step.event_id and step.event else None
        entries.append(
            TimelineEntry(
                at=step.occurred_at,
                workflow=step.run.workflow,
                business_key=step.run.business_key,
                label=declared.label if declared else step.step.replace("_", " "),
                system=(declared.system if declared else "") or "HealthSync",
                note=step.note,
                message_id=message.pk if message else None,
                message_type=message.message_type if message else "",
                delivery=step.delivery,
                event_type=step.event.type if step.event_id and step.event else "",
            )
        )
    keys = [r.business_key for r in runs]
    for delivery in Delivery.objects.filter(business_key__in=keys).select_related("connector__system"):
        entries.append(
            TimelineEntry(
                at=delivery.succeeded_at or delivery.created_at,
                workflow=delivery.workflow,
                business_key=delivery.business_key,
                label=f"{delivery.operation.replace('_', ' ')}: {delivery.get_status_display().lower()}",
                system=delivery.connector.system.name,
                note=delivery.external_id,
                delivery=delivery,
            )
        )
    entries.sort(key=lambda entry: entry.at)
    return entries


def run_summary(run: WorkflowRun) -> dict[str, Any]:
    definition = WORKFLOWS.get(run.workflow)
    reached = set(run.steps.values_list("step", flat=True))
    return {
        "definition": definition,
        "declared_steps": [
            {"step": step, "reached": step.name in reached}
            for step in (definition.steps if definition else ())
        ],
        "open_exceptions": ExceptionItem.objects.open()
        .filter(business_key=run.business_key)
        .order_by("created_at"),
        "exposure": ExceptionItem.objects.open()
        .filter(business_key=run.business_key)
        .aggregate(total=Sum("amount"))["total"],
    }
