"""Keeps `RunFact` current so the dashboards never scan workflow steps.

Every save of a run and every step it reaches marks the run dirty (one insert, from signal receivers wired in
`DashboardsConfig.ready`); `refresh()` recomputes the facts of dirty runs and is run by the worker every minute
(job "kpi-rollup") and, bounded, by the dashboard itself so a page shows what happened seconds ago.
`rebuild()` recomputes every fact: the nightly job "kpi-rollup-rebuild" runs it, and so does anything that loads
runs in bulk without signals (the scale generator).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from time import monotonic
from typing import Any

from django.db import connection, transaction
from django.db.models.functions import TruncDate
from django.utils import timezone

from dashboards.models import DirtyRun, KpiDay, RunFact
from dashboards.tally import COLUMNS, Tally
from healthsync import unitofwork
from healthsync.choices import RunStatus
from healthsync.governance.runtime import step_slas
from healthsync.inserts import insert_many
from workflows.definitions import WORKFLOWS, Workflow
from workflows.models import WorkflowRun, WorkflowStep

logger = logging.getLogger(__name__)

DTB = "discharge_to_bill"
P2P = "procure_to_pay"
REMITTANCE = "remittance"
INPATIENT = "I"
BATCH = 2000
# The step a run is filtered by (its anchor) and the step that finishes it, per workflow.
ANCHOR_STEP = {
    DTB: "discharged",
    P2P: "po_approved",
    REMITTANCE: "received",
    "labour_allocation": "payroll_read",
}
DONE_STEP = {
    DTB: "claim_submitted",
    P2P: "invoice_posted",
    REMITTANCE: "posted",
    "labour_allocation": "journal_posted",
}
_FIELDS = [f.name for f in RunFact._meta.concrete_fields if f.name not in ("run", "refreshed_at")] + [
    "refreshed_at"
]


def _hours(start: datetime | None, end: datetime | None) -> float | None:
    # A later milestone stamped before the earlier one is an upstream data error: leave it out of the figure.
    if start is None or end is None or end < start:
        return None
    return (end - start).total_seconds() / 3600


def _late_amount(context: dict[str, Any]) -> Decimal:
    total = Decimal("0")
    for charge in (context.get("charges") or {}).values():
        if not isinstance(charge, dict) or not charge.get("late"):
            continue
        try:
            amount = Decimal(str(charge.get("amount") or "0"))
        except InvalidOperation:
            continue
        total += -abs(amount) if charge.get("type") == "CD" else amount
    return total.quantize(Decimal("0.01"))


_SLA_CACHE: dict[str, tuple[float, dict[str, timedelta | None]]] = {}


def _deployed_slas(definition: Workflow) -> dict[str, timedelta | None]:
    """The deployed (governed) step SLAs, read at most once a minute per process: facts are made in bulk."""
    now = monotonic()
    hit = _SLA_CACHE.get(definition.code)
    if hit is None or now - hit[0] > 60:
        hit = _SLA_CACHE[definition.code] = (now, step_slas(definition))
    return hit[1]


def _sla(workflow: str, steps: dict[str, datetime]) -> tuple[int, int, int, datetime | None]:
    """Met, breached (steps left), open steps and the earliest open deadline, as `workflows.sla` judges them."""
    definition = WORKFLOWS.get(workflow)
    met = breached = still_open = 0
    deadline: datetime | None = None
    if definition is None:
        return 0, 0, 0, None
    slas = _deployed_slas(definition)
    for name, reached in steps.items():
        sla = slas.get(name)
        if sla is None:
            continue
        # The run leaves a step when it reaches any other step at or after it.
        left = min((t for n, t in steps.items() if n != name and t >= reached), default=None)
        if left is not None:
            if left - reached <= sla:
                met += 1
            else:
                breached += 1
        else:
            still_open += 1
            due = reached + sla
            deadline = due if deadline is None or due < deadline else deadline
    return met, breached, still_open, deadline


def fact_for(run: WorkflowRun, steps: dict[str, datetime]) -> RunFact:
    """The fact row of one run from the run and its steps (name → business time)."""
    context = run.context if isinstance(run.context, dict) else {}
    anchor_step = ANCHOR_STEP.get(run.workflow)
    anchor = steps.get(anchor_step) if anchor_step else min(steps.values(), default=None)
    done_step = DONE_STEP.get(run.workflow)
    done = steps.get(done_step) if done_step else run.completed_at
    met, breached, still_open, deadline = _sla(run.workflow, steps)
    fact = RunFact(
        run_id=run.pk,
        workflow=run.workflow,
        business_key=run.business_key,
        facility=run.facility,
        payer=run.payer,
        patient_class=run.patient_class,
        status=run.status,
        cancelled=run.status == RunStatus.CANCELLED,
        anchor_at=anchor,
        done_at=done,
        invoice_received_at=steps.get("invoice_received"),
        amount=run.amount or Decimal("0"),
        late_amount=_late_amount(context) if run.workflow == DTB else Decimal("0"),
        sla_met=met,
        sla_breached=breached,
        sla_open=still_open,
        sla_open_deadline=deadline,
        refreshed_at=timezone.now(),
    )
    if run.workflow == DTB:
        submitted, paid, denied = steps.get("claim_submitted"), steps.get("paid"), steps.get("denied")
        fact.dtb_hours = _hours(anchor, submitted)
        fact.claim_lag_hours = fact.dtb_hours if run.patient_class == INPATIENT else None
        fact.coding_hours = _hours(anchor, steps.get("coding_completed"))
        fact.hold_hours = _hours(anchor, steps.get("bill_hold_released"))
        fact.payment_lag_hours = _hours(submitted, paid)
        fact.remitted = bool(paid or denied)
        fact.denied_first = bool(denied and (paid is None or denied <= paid))
        touched = bool(context.get("fixes")) or "claim_rejected" in steps
        fact.clean = bool(submitted) and not touched
        fact.first_pass = (
            bool(submitted and paid)
            and not fact.denied_first
            and "claim_rejected" not in steps
            and "corrected_claim_submitted" not in steps
        )
    elif run.workflow == P2P:
        fact.cycle_hours = _hours(anchor, done)
    return fact


DIMS = ("facility", "payer", "patient_class")
# First key of the transaction-scoped advisory lock that serialises rewrites of one day's tallies.
DAY_LOCK = 7_007


def local_day(moment: datetime) -> date:
    return timezone.localtime(moment).date()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    tz = timezone.get_current_timezone()
    return datetime.combine(day, time.min, tz), datetime.combine(day + timedelta(days=1), time.min, tz)


def _days_of(facts: Any) -> set[tuple[str, date]]:
    return {
        (workflow, local_day(anchor))
        for workflow, anchor in facts.exclude(anchor_at=None).values_list("workflow", "anchor_at")
    }


def rollup_day(workflow: str, day: date) -> None:
    """Rewrite one day's tallies of a workflow: overall and per facility, payer and patient class."""
    if connection.vendor == "postgresql":
        # The worker and a page may refresh the same day at once: one rewrites it after the other commits.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [DAY_LOCK, day.toordinal()])
    start, end = day_bounds(day)
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    rows = RunFact.objects.filter(workflow=workflow, anchor_at__gte=start, anchor_at__lt=end).values_list(
        *DIMS, *COLUMNS
    )
    for row in rows:
        facets, values = row[: len(DIMS)], row[len(DIMS) :]
        tallies[("", "")].add_row(values)
        for dim, value in zip(DIMS, facets, strict=True):
            if value:
                tallies[(dim, value)].add_row(values)
    KpiDay.objects.filter(workflow=workflow, day=day).delete()
    KpiDay.objects.bulk_create(
        KpiDay(workflow=workflow, day=day, dim=dim, value=value, data=tally.to_json())
        for (dim, value), tally in tallies.items()
    )


def refresh_runs(run_ids: Iterable[int], *, days: bool = True) -> int:
    """Recompute the facts of these runs (deleted runs lose theirs by cascade), then the days they touch."""
    ids = list(run_ids)
    written = 0
    for offset in range(0, len(ids), BATCH):
        chunk = ids[offset : offset + BATCH]
        touched = _days_of(RunFact.objects.filter(run_id__in=chunk)) if days else set()
        steps: dict[int, dict[str, datetime]] = defaultdict(dict)
        for run_id, step, occurred_at in WorkflowStep.objects.filter(run_id__in=chunk).values_list(
            "run_id", "step", "occurred_at"
        ):
            steps[run_id][step] = occurred_at
        facts = [fact_for(run, steps[run.pk]) for run in WorkflowRun.objects.filter(pk__in=chunk)]
        RunFact.objects.bulk_create(
            facts, update_conflicts=True, unique_fields=["run"], update_fields=_FIELDS, batch_size=BATCH
        )
        written += len(facts)
        if days:
            for workflow, day in sorted(touched | _days_of(RunFact.objects.filter(run_id__in=chunk))):
                rollup_day(workflow, day)
    return written


def refresh(limit: int | None = None) -> int:
    """Bring the facts of dirty runs up to date (at most `limit` runs); returns how many runs were refreshed."""
    done = 0
    while limit is None or done < limit:
        size = BATCH if limit is None else min(BATCH, limit - done)
        with transaction.atomic():
            dirty = DirtyRun.objects.order_by("run_id")
            if connection.features.has_select_for_update_skip_locked:
                # Two refreshers (worker and a page) each take their own dirty runs.
                dirty = dirty.select_for_update(skip_locked=True)
            ids = list(dirty.values_list("run_id", flat=True)[:size])
            if not ids:
                break
            refresh_runs(ids)
            DirtyRun.objects.filter(run_id__in=ids).delete()
        done += len(ids)
    return done


def rebuild() -> int:
    """Recompute every fact from the runs and steps (after a bulk load, and nightly); returns the runs written."""
    DirtyRun.objects.all().delete()
    written = 0
    last = 0
    while True:
        ids = list(
            WorkflowRun.objects.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:BATCH]
        )
        if not ids:
            break
        with transaction.atomic():
            written += refresh_runs(ids, days=False)
        last = ids[-1]
    rebuild_days()
    return written


def rebuild_days() -> int:
    """Recompute every day's tallies from the facts; returns how many (workflow, day) pairs were written."""
    KpiDay.objects.all().delete()
    pairs = (
        RunFact.objects.exclude(anchor_at=None)
        .annotate(day=TruncDate("anchor_at"))
        .values_list("workflow", "day")
        .distinct()
    )
    count = 0
    for workflow, day in sorted(set(pairs)):
        with transaction.atomic():
            rollup_day(workflow, day)
        count += 1
    return count


def mark_dirty(run_id: int | None) -> None:
    """Ask for the run's facts to be recomputed; within a processing chunk, once per run at the chunk's end."""
    if run_id is None:
        return
    unit = unitofwork.current()
    if unit is not None:
        # Written after the chunk's run updates (which mark runs too): one insert per chunk.
        unit.pending("dashboards.dirty_runs", set, _write_dirty, order=1).add(run_id)
        return
    _write_dirty({run_id})


def _write_dirty(run_ids: set[int]) -> None:
    insert_many([DirtyRun(run_id=run_id) for run_id in sorted(run_ids)], ignore_conflicts=True)


def on_run_saved(sender: type, instance: WorkflowRun, raw: bool = False, **kwargs: Any) -> None:
    if not raw:
        mark_dirty(instance.pk)


def on_step_changed(sender: type, instance: WorkflowStep, raw: bool = False, **kwargs: Any) -> None:
    if not raw:
        mark_dirty(instance.run_id)


def refresh_job() -> int:
    return refresh()


def rebuild_job() -> int:
    return rebuild()
