"""How the discharge-to-bill workflow writes a chunk's new runs and steps: one statement each, as before."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models.signals import post_save
from django.utils import timezone

from healthsync.choices import RunStatus
from workflows import discharge_to_bill
from workflows.models import WorkflowRun, WorkflowStep

pytestmark = pytest.mark.django_db


def test_nothing_listens_to_new_workflow_steps() -> None:
    """A chunk writes its steps without sending post_save: a receiver added for them would need it sent."""
    assert not post_save.has_listeners(WorkflowStep)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="runs are started together on PostgreSQL")
def test_new_runs_are_started_together_and_a_key_already_taken_is_left_alone() -> None:
    workflow = discharge_to_bill.WORKFLOW
    taken = WorkflowRun.objects.create(workflow=workflow, business_key="V2", step="admitted")
    now = timezone.now()
    runs = [WorkflowRun(workflow=workflow, business_key=key, started_at=now) for key in ("V1", "V2", "V3")]
    heard: list[tuple[str, bool]] = []

    def receiver(instance: WorkflowRun, created: bool, **kwargs: Any) -> None:
        heard.append((instance.business_key, created))

    post_save.connect(receiver, sender=WorkflowRun)
    try:
        assert discharge_to_bill._start_runs(runs) == [True, False, True]
    finally:
        post_save.disconnect(receiver, sender=WorkflowRun)

    assert heard == [("V1", True), ("V3", True)]
    assert runs[1].pk is None
    for run in (runs[0], runs[2]):
        stored = WorkflowRun.objects.get(pk=run.pk)
        assert stored.business_key == run.business_key
        assert (stored.status, stored.step, stored.context, stored.amount) == (
            RunStatus.ACTIVE,
            "",
            {},
            Decimal(0),
        )
        assert stored.started_at == now and stored.updated_at == run.updated_at
        assert stored.completed_at is None
    assert WorkflowRun.objects.get(pk=taken.pk).step == "admitted"
