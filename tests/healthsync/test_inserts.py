"""Many-row writes (healthsync.inserts) store exactly what `save()` stores, whatever the values.

On PostgreSQL the rows travel as one JSON document (json_to_recordset) with only the values get_db_prep_save
would change prepared by it; these tests hold that shortcut to the ORM's own writes.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Model
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext

from dashboards.models import DirtyRun
from healthsync.choices import DeliveryStatus, RunStatus
from healthsync.inserts import insert_many, insert_many_if_new, insert_rows, update_rows
from healthsync.models import CanonicalEvent, Connector, Delivery
from healthsync.seed import seed_reference_config
from workflows.models import WorkflowRun, WorkflowStep

pytestmark = pytest.mark.django_db

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the JSON rows and column lengths are PostgreSQL's"
)

AWKWARD_TEXT = 'it\'s "quoted" \\ back\\slashed, {braced}, NULL, ünïcödé ✓, tab\tand\nnewline'
AWKWARD_JSON = {
    "text": AWKWARD_TEXT,
    "nested": [1, 2.5, None, True, {"deep": ["x", ""]}],
    "empty": {},
    "big": 12345678901234567890,
}


def _stored(obj: Model, *, skip: tuple[str, ...]) -> dict[str, Any]:
    row = type(obj)._base_manager.filter(pk=obj.pk).values().get()
    return {name: value for name, value in row.items() if name not in {"id", *skip}}


def _run(key: str, **values: Any) -> WorkflowRun:
    return WorkflowRun(workflow="w", business_key=key, **values)


def test_rows_inserted_together_are_stored_as_save_stores_them() -> None:
    values = {
        "status": RunStatus.COMPLETED,
        "step": AWKWARD_TEXT[:80],
        "context": AWKWARD_JSON,
        "payer": "",
        "amount": Decimal("1234.565"),
        "started_at": datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=ZoneInfo("Europe/Berlin")),
        "completed_at": None,
    }
    saved = _run("saved", **values)
    saved.save()
    together = _run("together", **values)

    assert insert_many_if_new([together], key=["workflow", "business_key"]) == [True]

    assert _stored(together, skip=("business_key", "updated_at")) == _stored(
        saved, skip=("business_key", "updated_at")
    )


def test_defaults_choices_and_plain_numbers_are_stored_as_save_stores_them() -> None:
    seed_reference_config()
    connector = Connector.objects.get(code="rcm-claims")
    event = CanonicalEvent.objects.create(type="t", source="s", idempotency_key="e-1", data=["a", "list"])
    made = {
        "connector": connector,
        "operation": "submit_claim",
        "payload": "a JSON string",
        "status": DeliveryStatus.SUCCEEDED,
        "attempts": 3,
        "event": event,
    }
    saved = Delivery.objects.create(idempotency_key="saved", **made)
    together = Delivery(idempotency_key="together", **made)
    amounts = [_run("int", amount=7), _run("str", amount="2.5"), _run("float", amount=0.1)]

    assert insert_many_if_new([together], key=["idempotency_key"]) == [True]
    insert_many(amounts)

    assert _stored(together, skip=("idempotency_key", "created_at")) == _stored(
        saved, skip=("idempotency_key", "created_at")
    )
    assert [WorkflowRun.objects.get(pk=run.pk).amount for run in amounts] == [
        Decimal("7.00"),
        Decimal("2.50"),
        Decimal("0.10"),
    ]


def test_an_event_with_its_own_uuid_and_no_optional_values_is_stored_as_given() -> None:
    event = CanonicalEvent(
        id=uuid.UUID("5f0c8f3e-1111-4e5b-9a0c-123456789abc"),
        type="t",
        source="s",
        idempotency_key="e-2",
        correlation={},
        data={"quote": '"', "null": None},
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    assert insert_many_if_new([event], key=["idempotency_key"]) == [True]

    stored = CanonicalEvent.objects.get(idempotency_key="e-2")
    assert stored.pk == event.pk == uuid.UUID("5f0c8f3e-1111-4e5b-9a0c-123456789abc")
    assert (stored.data, stored.correlation, stored.occurred_at, stored.message_id) == (
        {"quote": '"', "null": None},
        {},
        None,
        None,
    )
    assert stored.recorded_at == datetime(2026, 1, 1, tzinfo=UTC)


@postgres_only
def test_a_value_too_long_for_its_column_is_refused_not_cut() -> None:
    with pytest.raises(DataError), transaction.atomic():
        insert_many_if_new([_run("x" * 201)], key=["workflow", "business_key"])

    assert not WorkflowRun.objects.exists()


def test_update_rows_stores_what_save_stores() -> None:
    saved, updated = _run("saved"), _run("updated")
    saved.save()
    updated.save()
    for run in (saved, updated):
        run.context = AWKWARD_JSON
        run.payer = AWKWARD_TEXT[:120]
        run.amount = Decimal("99.999")
        run.status = RunStatus.BLOCKED
        run.completed_at = datetime(2026, 5, 1, 12, tzinfo=ZoneInfo("America/Chicago"))
    saved.save()

    update_rows([updated], ["context", "payer", "amount", "status", "completed_at"])

    skip = ("business_key", "started_at", "updated_at")
    assert _stored(updated, skip=skip) == _stored(saved, skip=skip)


def test_update_rows_writes_an_auto_now_value_as_it_is() -> None:
    run = _run("kept")
    run.save()
    run.updated_at = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)

    update_rows([run], ["updated_at"])

    assert WorkflowRun.objects.get(pk=run.pk).updated_at == datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_insert_many_sets_the_pks_in_order() -> None:
    run = _run("steps")
    run.save()
    steps = [
        WorkflowStep(run=run, step=f"s{n}", occurred_at=datetime(2026, 1, n + 1, tzinfo=UTC))
        for n in range(5)
    ]

    insert_many(steps)

    assert [(step.pk, step.step) for step in steps] == list(
        WorkflowStep.objects.order_by("step").values_list("pk", "step")
    )
    assert all(not step._state.adding for step in steps)


def test_insert_many_raises_on_a_taken_key_unless_told_to_skip_it() -> None:
    DirtyRun.objects.create(run_id=1)

    insert_many([DirtyRun(run_id=1), DirtyRun(run_id=2)], ignore_conflicts=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_many([DirtyRun(run_id=2)])

    assert sorted(DirtyRun.objects.values_list("run_id", flat=True)) == [1, 2]


def test_plain_rows_are_stored_as_save_stores_them_as_tuples_or_dicts() -> None:
    run = _run("steps")
    run.save()
    event = CanonicalEvent.objects.create(type="t", source="s", idempotency_key="e-3", data={})
    names = ["run_id", "step", "occurred_at", "recorded_at", "event_id", "note"]
    values = {
        "run_id": run.pk,
        "occurred_at": datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=ZoneInfo("Europe/Berlin")),
        "recorded_at": datetime(2026, 1, 1, tzinfo=UTC),
        "note": AWKWARD_TEXT,
    }
    saved = WorkflowStep.objects.create(step="saved", event=event, **values)

    insert_rows(
        WorkflowStep, names, [tuple({**values, "step": "tuple", "event_id": event.pk}[n] for n in names)]
    )
    insert_rows(WorkflowStep, names, [{**values, "step": "dict", "event_id": event.pk}])

    stored = [_stored(step, skip=("step",)) for step in WorkflowStep.objects.order_by("step")]
    assert [step.step for step in WorkflowStep.objects.order_by("step")] == ["dict", "saved", "tuple"]
    assert stored == [_stored(saved, skip=("step",))] * 3


def test_runs_alike_but_for_their_key_are_stored_as_save_stores_them() -> None:
    values = {
        "context": AWKWARD_JSON,
        "amount": Decimal("5.5"),
        "step": AWKWARD_TEXT[:80],
        "started_at": datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("Europe/Berlin")),
    }
    saved = _run("saved", **values)
    saved.save()
    taken = _run("taken")
    taken.save()
    sent = []
    receiver = lambda sender, instance, created, **kwargs: sent.append((instance.business_key, created))  # noqa: E731
    post_save.connect(receiver, sender=WorkflowRun)
    try:
        runs = [_run(key, **values) for key in ["a", "taken", "b", "a"]]
        inserted = insert_many_if_new(runs, key=["workflow", "business_key"], varying=["business_key"])
    finally:
        post_save.disconnect(receiver, sender=WorkflowRun)

    assert inserted == [True, False, True, False]
    assert sent == [("a", True), ("b", True)]
    assert runs[1].pk is None and runs[3].pk is None
    skip = ("business_key", "updated_at")
    for run in (runs[0], runs[2]):
        assert _stored(run, skip=skip) == _stored(saved, skip=skip)
        assert WorkflowRun.objects.get(pk=run.pk).updated_at == run.updated_at


@postgres_only
def test_the_statement_is_the_same_for_any_number_of_rows() -> None:
    """psycopg keeps its conversion of a statement only if the text is short, and so the same from call to call."""
    with CaptureQueriesContext(connection) as queries:
        insert_many_if_new([_run("a")], key=["workflow", "business_key"])
        insert_many_if_new([_run(f"b{n}") for n in range(50)], key=["workflow", "business_key"])
        update_rows(list(WorkflowRun.objects.all()), ["status"])
        update_rows(list(WorkflowRun.objects.all()[:1]), ["status"])
        for keys in (["c"], [f"d{n}" for n in range(50)]):
            runs = [_run(key) for key in keys]
            insert_many_if_new(runs, key=["workflow", "business_key"], varying=["business_key"])
        run = WorkflowRun.objects.get(business_key="a")
        for count in (1, 50):
            rows = [(run.pk, f"s{count}-{n}", run.started_at, run.started_at, "") for n in range(count)]
            insert_rows(WorkflowStep, ["run_id", "step", "occurred_at", "recorded_at", "note"], rows)

    sql = [q["sql"] for q in queries.captured_queries]
    inserts = [text for text in sql if text.startswith('INSERT INTO "workflows_workflowrun"')]
    updates = [text for text in sql if text.startswith('UPDATE "workflows_workflowrun"')]
    steps = [text for text in sql if text.startswith('INSERT INTO "workflows_workflowstep"')]

    def text(sql: str) -> str:
        # Django logs the statement with its parameters in place: compare the text around them.
        return re.sub(r"'(?:[^']|'')*'", "%s", sql)

    assert len({text(sql) for sql in inserts[:2]}) == 1
    assert len({text(sql) for sql in inserts[2:]}) == 1
    assert len({text(sql) for sql in updates}) == 1
    assert len({text(sql) for sql in steps}) == 1
    assert (len(inserts), len(updates), len(steps)) == (4, 2, 2)
    assert WorkflowRun.objects.count() == 102
    assert WorkflowStep.objects.count() == 51
