"""Audit entries for rows inserted in bulk: written in one statement, exactly as auditlog writes them row by row.

`send_created_many` must leave the audit trail as one post_save per row would: the same entries, column for
column. Whatever changes how auditlog writes (an actor, disabling it, its pre_log/post_log signals, another
receiver) sends the signal per row instead, and the entries still match.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from auditlog.context import disable_auditlog, set_actor
from auditlog.models import LogEntry
from auditlog.registry import auditlog
from auditlog.signals import post_log, pre_log
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Max
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext, override_settings

from connectors.simulators import hl7_builder
from healthsync.audit import send_created_many
from healthsync.choices import ExceptionKind
from healthsync.inserts import send_created
from healthsync.models import ExceptionItem
from healthsync.pipeline import process_pending
from healthsync.seed import seed_reference_config
from tests.pipeline_support import store

pytestmark = pytest.mark.django_db

Context = Callable[[], contextlib.AbstractContextManager[Any]]


def _items() -> list[ExceptionItem]:
    items = [
        ExceptionItem(
            kind=ExceptionKind.MISSING_DATA,
            reason="Missing insurance — Zoë's account",
            detail={"missing": ["insurance"], "note": "naïve ✓", "nested": {"n": 1.5, "none": None}},
            workflow="discharge_to_bill",
            business_key="V1",
            facility="North",
            amount=Decimal("12.30"),
        ),
        ExceptionItem(kind=ExceptionKind.MISSING_DATA, reason="Missing attending", business_key="V2"),
    ]
    return ExceptionItem.objects.bulk_create(items)


def _entries_written(write: Callable[[], None]) -> list[tuple[Any, ...]]:
    """The audit entries `write` adds: every column as text, as the database holds it, but the id and timestamp."""
    last = LogEntry.objects.aggregate(last=Max("id"))["last"] or 0
    write()
    quote = connection.ops.quote_name
    columns = ", ".join(
        f"CAST({quote(f.column)} AS TEXT)"
        for f in LogEntry._meta.concrete_fields
        if f.name not in ("id", "timestamp")
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {quote(LogEntry._meta.db_table)} WHERE id > %s ORDER BY id",  # noqa: S608
            [last],
        )
        return cursor.fetchall()


def _entry_inserts(write: Callable[[], None]) -> int:
    with CaptureQueriesContext(connection) as queries:
        write()
    table = LogEntry._meta.db_table
    return sum(q["sql"].startswith(f'INSERT INTO "{table}"') for q in queries.captured_queries)


@contextlib.contextmanager
def _registered_with_options() -> Iterator[None]:
    saved = dict(auditlog._registry[ExceptionItem])
    auditlog.unregister(ExceptionItem)
    auditlog.register(
        ExceptionItem,
        exclude_fields=["updated_at", "facility"],
        mask_fields=["reason"],
        serialize_data=True,
        serialize_auditlog_fields_only=True,
    )
    try:
        yield
    finally:
        auditlog.unregister(ExceptionItem)
        auditlog.register(ExceptionItem, **saved)


@contextlib.contextmanager
def _connected(signal: Any, receiver: Callable[..., Any]) -> Iterator[None]:
    signal.connect(receiver, sender=ExceptionItem, weak=False)
    try:
        yield
    finally:
        signal.disconnect(receiver, sender=ExceptionItem)


def _actor() -> contextlib.AbstractContextManager[Any]:
    user = User.objects.get_or_create(username="auditor", defaults={"email": "auditor@example.org"})[0]
    return set_actor(user, remote_addr="10.0.0.7", remote_port=4711)


# (context, whether the entries go in one statement)
CONTEXTS: dict[str, tuple[Context, bool]] = {
    "default": (contextlib.nullcontext, True),
    "json changes": (lambda: override_settings(AUDITLOG_STORE_JSON_CHANGES=True), True),
    "correlation id": (lambda: override_settings(AUDITLOG_CID_GETTER=lambda: "cid-42"), True),
    "registration options": (_registered_with_options, True),
    "actor": (_actor, False),
    "auditlog disabled": (disable_auditlog, False),
    "pre_log veto": (lambda: _connected(pre_log, lambda **kwargs: False), False),
    "post_log receiver": (lambda: _connected(post_log, lambda **kwargs: None), False),
}


@pytest.mark.parametrize("name", CONTEXTS)
def test_it_writes_the_entries_one_post_save_per_row_writes(name: str) -> None:
    context, in_one_statement = CONTEXTS[name]
    items = _items()

    with context():
        per_row = _entries_written(lambda: [send_created(item) for item in items])
    LogEntry.objects.all().delete()
    with context():
        inserts = _entry_inserts(lambda: send_created_many(items))
    new = list(LogEntry.objects.values_list("pk", flat=True))
    LogEntry.objects.all().delete()
    with context():
        together = _entries_written(lambda: send_created_many(items))

    assert together == per_row
    assert inserts == (1 if in_one_statement else len(new))
    if name == "actor":
        by_actor = LogEntry.objects.filter(actor__username="auditor", remote_addr="10.0.0.7")
        assert by_actor.count() == len(items)
    elif name in ("auditlog disabled", "pre_log veto"):
        assert per_row == []
    else:
        assert len(per_row) == len(items)


def test_another_post_save_receiver_still_hears_of_each_row() -> None:
    items = _items()
    heard: list[int] = []

    with _connected(post_save, lambda instance, created, **kwargs: heard.append(instance.pk)):
        send_created_many(items)

    assert heard == [item.pk for item in items]
    assert LogEntry.objects.filter(action=LogEntry.Action.CREATE).count() == len(items)


def test_a_chunk_writes_the_create_entries_of_its_new_exceptions_in_one_statement() -> None:
    seed_reference_config()
    for encounter in ("V1", "V2", "V3"):
        store(hl7_builder.adt_a01(encounter_id=encounter, account_number=encounter, include_insurance=False))
        store(hl7_builder.adt_a03(encounter_id=encounter, account_number=encounter, include_insurance=False))

    assert _entry_inserts(process_pending) == 1

    items = ExceptionItem.objects.filter(kind=ExceptionKind.MISSING_DATA)
    assert items.count() == 3
    for item in items:
        (entry,) = LogEntry.objects.get_for_object(item)
        assert entry.action == LogEntry.Action.CREATE
        assert entry.changes_dict["id"] == ["None", str(item.pk)]


def test_an_actor_context_inside_the_request_middlewares_leaves_no_receiver_behind() -> None:
    from django.contrib.auth.models import User
    from django.db.models.signals import pre_save

    from healthsync.audit import acting_as

    user = User.objects.create(username="nested-actor")
    before = pre_save._live_receivers(LogEntry)[0]
    # Inside auditlog's request middleware context, as a service called from a view is.
    with set_actor(user), acting_as(user, additional_data={"change_request": 1}):
        pass
    assert pre_save._live_receivers(LogEntry)[0] == before
