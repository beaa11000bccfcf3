"""How a chunk reads its runs ahead: one statement written once, giving the runs exactly as the ORM reads them."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from healthsync.choices import RunStatus
from workflows import discharge_to_bill
from workflows.models import WorkflowRun, WorkflowStep

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the read-ahead is PostgreSQL's"),
]


def test_it_locks_the_runs_of_the_keys_as_the_orm_reads_them_with_their_step_names() -> None:
    workflow = discharge_to_bill.WORKFLOW
    now = timezone.now()
    first = WorkflowRun.objects.create(
        workflow=workflow,
        business_key="V1",
        status=RunStatus.BLOCKED,
        step="discharged",
        context={"coverage": {"payer_id": "AETNA01"}, "charges": {"1": {"amount": "10.50"}}},
        facility="MAIN",
        patient_class="I",
        payer="Aetna",
        amount=Decimal("10.50"),
        started_at=now - timedelta(days=2),
        completed_at=now,
    )
    WorkflowStep.objects.create(run=first, step="admitted", occurred_at=now)
    WorkflowStep.objects.create(run=first, step="discharged", occurred_at=now)
    second = WorkflowRun.objects.create(workflow=workflow, business_key="V2")
    WorkflowRun.objects.create(workflow="other", business_key="V1")

    with CaptureQueriesContext(connection) as queries:
        runs = discharge_to_bill._lock_runs(["V2", "V1", "V9"])

    assert len(queries) == 1
    assert queries[0]["sql"].endswith("FOR UPDATE OF r")
    assert list(runs) == ["V1", "V2"]  # locked in id order
    for run in runs.values():
        stored = WorkflowRun.objects.get(pk=run.pk)
        for field in WorkflowRun._meta.concrete_fields:
            assert getattr(run, field.attname) == getattr(stored, field.attname), field.name
        assert not run._state.adding
    assert runs["V1"].context["charges"]["1"]["amount"] == "10.50"
    assert runs["V2"].pk == second.pk
    with CaptureQueriesContext(connection) as queries:
        assert discharge_to_bill._has_step(runs["V1"], "discharged")
        assert not discharge_to_bill._has_step(runs["V2"], "admitted")
    assert len(queries) == 0
