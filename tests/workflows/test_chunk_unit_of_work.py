"""A chunk's unit of work: events inserted together, runs read ahead, run updates and steps written at the end.

What the chunk defers must come out exactly as if each message had written its own rows: later messages of an
encounter see what earlier ones changed, a failure after deferred writes leaves nothing of the failing message
behind, and the KPI rollups still hear of every run that changed.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from connectors.simulators import hl7_builder
from dashboards.models import DirtyRun
from healthsync.choices import DeliveryStatus, ExceptionKind, MessageStatus, RunStatus
from healthsync.inserts import insert_many_if_new, update_rows
from healthsync.models import CanonicalEvent, Delivery, ExceptionItem, Message
from healthsync.pipeline import process_pending
from healthsync.registry import workflow_registry
from healthsync.seed import seed_reference_config
from tests.pipeline_support import store
from workflows import discharge_to_bill
from workflows.models import WorkflowRun, WorkflowStep

pytestmark = pytest.mark.django_db

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the read-ahead and bulk writes are PostgreSQL's"
)


@pytest.fixture(autouse=True)
def seeded() -> None:
    seed_reference_config()


def _encounter(encounter: str, *, discharge: bool = True) -> list[str]:
    raws = [
        hl7_builder.adt_a01(encounter_id=encounter, account_number=encounter),
        hl7_builder.dft_p03(encounter_id=encounter, account_number=encounter),
    ]
    if discharge:
        raws.append(hl7_builder.adt_a03(encounter_id=encounter, account_number=encounter))
    return raws


def _run(encounter: str) -> WorkflowRun:
    return WorkflowRun.objects.get(workflow=discharge_to_bill.WORKFLOW, business_key=encounter)


def _statements(queries: CaptureQueriesContext, prefix: str) -> int:
    return sum(1 for query in queries.captured_queries if query["sql"].startswith(prefix))


def test_messages_of_one_encounter_in_one_chunk_build_on_each_other() -> None:
    messages = [store(raw) for raw in _encounter("V1")]

    with CaptureQueriesContext(connection) as queries:
        assert process_pending() == 3

    assert set(Message.objects.values_list("status", flat=True)) == {MessageStatus.PROCESSED}
    run = _run("V1")
    # The discharge saw the charges and the admission data the two earlier messages merged into the run.
    assert run.amount == Decimal("3250.50")
    assert run.context["coverage"]["payer_id"] == "AETNA01"
    assert run.step == "claim_ready"
    assert set(run.steps.values_list("step", flat=True)) == {
        "admitted",
        "charges_posted",
        "discharged",
        "claim_ready",
    }
    claim = Delivery.objects.get(operation=discharge_to_bill.CLAIM_OPERATION)
    assert run.context["claim_delivery_id"] == claim.pk
    assert claim.payload["total_charges"] == "3250.50"
    assert WorkflowRun.objects.filter(workflow=discharge_to_bill.WORKFLOW).count() == 1
    if connection.vendor == "postgresql":
        # One statement each for the chunk's events, its run updates and its steps.
        assert _statements(queries, 'INSERT INTO "healthsync_canonicalevent"') == 1
        assert _statements(queries, 'UPDATE "workflows_workflowrun"') == 1
        assert _statements(queries, 'INSERT INTO "workflows_workflowstep"') == 1
    assert len(messages) == CanonicalEvent.objects.count() == 3


def test_a_failure_after_deferred_writes_leaves_nothing_of_the_failing_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The discharge of V2 fails after its handler changed the run in memory: the chunk is redone carefully."""

    def boom(event: CanonicalEvent) -> None:
        if event.subject == "V2":
            raise RuntimeError("a bug in a later handler")

    handlers = [*workflow_registry.handlers_for("encounter.discharged"), boom]
    monkeypatch.setitem(workflow_registry.event_handlers, "encounter.discharged", handlers)
    raws = [*_encounter("V1", discharge=False), *_encounter("V2", discharge=False)]
    raws += [
        hl7_builder.adt_a03(encounter_id="V1", account_number="V1"),
        hl7_builder.adt_a03(encounter_id="V2", account_number="V2"),
    ]
    messages = [store(raw) for raw in raws]

    assert process_pending() == 6

    statuses = dict(Message.objects.values_list("id", "status"))
    assert [statuses[m.pk] for m in messages] == [MessageStatus.PROCESSED] * 5 + [MessageStatus.FAILED]
    good, bad = _run("V1"), _run("V2")
    assert good.step == "claim_ready" and "discharged" in set(good.steps.values_list("step", flat=True))
    # V2 keeps its admission and charges; nothing of its failed discharge reached the table.
    assert bad.step == "charges_posted"
    assert set(bad.steps.values_list("step", flat=True)) == {"admitted", "charges_posted"}
    assert "discharged_at" not in bad.context and "claim_delivery_id" not in bad.context
    assert set(Delivery.objects.values_list("business_key", flat=True)) == {"V1"}
    assert Delivery.objects.filter(operation=discharge_to_bill.CLAIM_OPERATION).count() == 1
    assert ExceptionItem.objects.get().message_id == messages[-1].pk
    assert CanonicalEvent.objects.count() == 5


def test_a_cancelled_discharge_in_the_same_chunk_withdraws_the_claim() -> None:
    """A13 right behind its A03: the steps the A03 left pending are in the table before the cancel undoes them."""
    raws = [*_encounter("V1"), hl7_builder.adt_a13(encounter_id="V1", account_number="V1")]
    for raw in raws:
        store(raw)

    assert process_pending() == 4

    run = _run("V1")
    steps = set(run.steps.values_list("step", flat=True))
    assert "discharged" not in steps and "claim_ready" not in steps
    assert {"admitted", "charges_posted", "discharge_cancelled", "claim_withdrawn"} <= steps
    assert run.step == "admitted" and run.status == RunStatus.ACTIVE
    assert "claim_delivery_id" not in run.context and "discharged_at" not in run.context
    claim = Delivery.objects.get(operation=discharge_to_bill.CLAIM_OPERATION)
    assert claim.status == DeliveryStatus.FAILED and claim.last_error == discharge_to_bill.WITHDRAWN


def test_every_changed_run_is_marked_dirty_for_the_kpi_rollups_once_per_chunk() -> None:
    for encounter in ("V1", "V2"):
        for raw in _encounter(encounter):
            store(raw)
    DirtyRun.objects.all().delete()

    with CaptureQueriesContext(connection) as queries:
        assert process_pending() == 6

    runs = set(WorkflowRun.objects.values_list("id", flat=True))
    assert len(runs) == 2
    assert set(DirtyRun.objects.values_list("run_id", flat=True)) == runs
    if connection.vendor == "postgresql":
        assert _statements(queries, 'INSERT INTO "dashboards_dirtyrun"') == 1


def test_incomplete_accounts_in_a_chunk_each_get_their_missing_data_exception() -> None:
    for encounter in ("V1", "V2"):
        store(hl7_builder.adt_a01(encounter_id=encounter, include_insurance=False))
        store(hl7_builder.adt_a03(encounter_id=encounter, include_insurance=False))

    assert process_pending() == 4

    items = ExceptionItem.objects.filter(kind=ExceptionKind.MISSING_DATA).order_by("business_key")
    assert [item.business_key for item in items] == ["V1", "V2"]
    assert {_run("V1").status, _run("V2").status} == {RunStatus.BLOCKED}
    assert not Delivery.objects.exists()


@postgres_only
def test_insert_many_if_new_inserts_each_key_once_and_reports_which() -> None:
    with transaction.atomic():
        existing = CanonicalEvent(type="t", source="s", idempotency_key="k-0", subject="old")
        assert insert_many_if_new([existing], key=["idempotency_key"]) == [True]
        batch = [
            CanonicalEvent(type="t", source="s", idempotency_key="k-0", subject="repeat"),
            CanonicalEvent(type="t", source="s", idempotency_key="k-1", subject="first"),
            CanonicalEvent(type="t", source="s", idempotency_key="k-1", subject="second copy"),
        ]

        assert insert_many_if_new(batch, key=["idempotency_key"]) == [False, True, False]

    assert dict(CanonicalEvent.objects.values_list("idempotency_key", "subject")) == {
        "k-0": "old",
        "k-1": "first",
    }
    assert CanonicalEvent.objects.get(idempotency_key="k-1").pk == batch[1].pk


def test_update_rows_writes_json_decimal_and_time_columns() -> None:
    first = WorkflowRun.objects.create(workflow="w", business_key="A")
    second = WorkflowRun.objects.create(workflow="w", business_key="B")
    first.context = {"charges": {"1": {"amount": "10.50"}}, "note": 'it\'s "quoted"'}
    first.amount = Decimal("10.50")
    second.status = RunStatus.COMPLETED
    second.completed_at = second.started_at

    update_rows([first, second], ["context", "amount", "status", "completed_at"])

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.context == {"charges": {"1": {"amount": "10.50"}}, "note": 'it\'s "quoted"'}
    assert first.amount == Decimal("10.50") and first.completed_at is None
    assert second.status == RunStatus.COMPLETED and second.completed_at == second.started_at
    assert WorkflowStep.objects.count() == 0


def test_a_delivery_that_exists_after_all_makes_the_chunk_redo_and_reuse_it() -> None:
    """Deliveries are written at the chunk's end as new; a key already taken sends the chunk to the careful pass."""
    for raw in _encounter("V1"):
        store(raw)
    connector = discharge_to_bill.connector_for_operation(discharge_to_bill.CLAIM_OPERATION)
    existing = Delivery.objects.create(
        connector=connector,
        operation=discharge_to_bill.CLAIM_OPERATION,
        idempotency_key="ehr-main:claim:V1:1",
        workflow=discharge_to_bill.WORKFLOW,
        business_key="V1",
        payload={"sent": "before"},
    )

    assert process_pending() == 3

    assert set(Message.objects.values_list("status", flat=True)) == {MessageStatus.PROCESSED}
    run = _run("V1")
    assert run.context["claim_delivery_id"] == existing.pk
    assert Delivery.objects.filter(idempotency_key=existing.idempotency_key).count() == 1
    assert Delivery.objects.get(pk=existing.pk).payload == {"sent": "before"}
    assert Delivery.objects.filter(operation="post_accrual").count() == 1
