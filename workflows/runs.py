"""Run and step helpers the workflows share: find a run by its key (row-locked) and record a step once."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from healthsync.inserts import insert_if_new
from healthsync.models import CanonicalEvent, Delivery
from workflows.models import WorkflowRun, WorkflowStep


def run_for(workflow: str, business_key: str) -> WorkflowRun:
    """The run of `workflow` for `business_key`, created if new; the row lock orders events of one key."""
    runs = WorkflowRun.objects.select_for_update()
    run = runs.filter(workflow=workflow, business_key=business_key).first()
    if run is None:
        # A new run: the inserted row is this transaction's until it commits (as good as locked); a run another
        # worker inserted meanwhile is read, locked, once its insert commits. No savepoint either way.
        run = WorkflowRun(workflow=workflow, business_key=business_key)
        if not insert_if_new(run):
            run = runs.get(workflow=workflow, business_key=business_key)
    if not isinstance(run.context, dict):
        run.context = {}
    return run


def record_step(
    run: WorkflowRun,
    step: str,
    occurred_at: datetime | None = None,
    *,
    event: CanonicalEvent | None = None,
    delivery: Delivery | None = None,
    note: str = "",
) -> None:
    """Record a step the first time it is reached and make it the run's current step."""
    if run.pk is None:
        run.save()
    WorkflowStep.objects.get_or_create(
        run=run,
        step=step,
        defaults={
            "occurred_at": occurred_at or timezone.now(),
            "event": event,
            "delivery": delivery,
            "note": note[:300],
        },
    )
    run.step = step
