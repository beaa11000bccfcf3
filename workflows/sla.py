"""The scheduled SLA check: a run waiting too long in a step raises an exception by itself.

`sla_check()` reads each workflow's declared step SLAs (workflows/definitions.py). A run that already has an
open exception is left alone: that exception is what people work, and it carries its own due time.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from healthsync.choices import ExceptionKind, RunStatus
from healthsync.governance.runtime import step_slas
from healthsync.models import ExceptionItem
from workflows.definitions import EXCEPTION_SLA, WORKFLOWS
from workflows.models import WorkflowRun, WorkflowStep

logger = logging.getLogger(__name__)


def sla_check(now: datetime | None = None) -> int:
    """Raise one SLA-breached exception per run overdue in its current step; returns how many were raised."""
    now = now or timezone.now()
    raised = 0
    for workflow in WORKFLOWS.values():
        slas = step_slas(workflow)  # the deployed SLAs (governed), defaulting to the code's
        for step in workflow.steps:
            sla = slas[step.name]
            if sla is None:
                continue
            overdue = WorkflowStep.objects.filter(
                run__workflow=workflow.code,
                run__step=step.name,
                run__status__in=[RunStatus.ACTIVE, RunStatus.BLOCKED],
                step=step.name,
                occurred_at__lt=now - sla,
            ).select_related("run")
            for row in overdue:
                if _raise_breach(row.run, step.label, row.occurred_at + sla, now):
                    raised += 1
    if raised:
        logger.info("sla check raised %s exceptions", raised)
    return raised


@transaction.atomic
def _raise_breach(run: WorkflowRun, step_label: str, due: datetime, now: datetime) -> bool:
    if ExceptionItem.objects.open().filter(workflow=run.workflow, business_key=run.business_key).exists():
        return False
    hours = int((now - due).total_seconds() // 3600)
    ExceptionItem.objects.create(
        kind=ExceptionKind.SLA_BREACHED,
        workflow=run.workflow,
        business_key=run.business_key,
        reason=(
            f"{run.business_key} has waited in “{step_label}” past its SLA"
            + (f" by {hours} h" if hours else "")
            + ": check what holds it in the source system."
        ),
        detail={"step": run.step, "due": due.isoformat()},
        facility=run.facility,
        payer=run.payer,
        amount=run.amount,
        sla_due_at=now + EXCEPTION_SLA[ExceptionKind.SLA_BREACHED],
    )
    return True
