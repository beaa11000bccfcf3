"""Run and step helpers the workflows share: find a run by its key (row-locked) and record a step once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from healthsync.choices import RunStatus
from healthsync.models import CanonicalEvent, Delivery, ExceptionItem
from workflows.models import WorkflowRun, WorkflowStep


def run_for(workflow: str, business_key: str) -> WorkflowRun:
    """The run of `workflow` for `business_key`, created if new; the row lock orders events of one key."""
    run, _ = WorkflowRun.objects.select_for_update().get_or_create(
        workflow=workflow, business_key=business_key
    )
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


def block_with_exception(
    run: WorkflowRun,
    *,
    kind: str,
    fields: dict[str, Any],
    event: CanonicalEvent | None = None,
    match: dict[str, Any] | None = None,
) -> ExceptionItem:
    """Raise (or refresh the open one of) `kind` for the run's key and mark the run blocked (unsaved).

    `match` narrows which open exception counts as the same one (e.g. one per invoice number).
    """
    existing = (
        ExceptionItem.objects.open()
        .filter(workflow=run.workflow, business_key=run.business_key, kind=kind, **(match or {}))
        .first()
    )
    if existing is not None:
        for name, value in fields.items():
            setattr(existing, name, value)
        existing.save()
        item = existing
    else:
        item = ExceptionItem.objects.create(
            kind=kind,
            workflow=run.workflow,
            business_key=run.business_key,
            event=event if event is not None and event.pk else None,
            message=event.message if event is not None else None,
            **fields,
        )
    run.status = RunStatus.BLOCKED
    return item
