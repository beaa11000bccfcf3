"""The message store partitioned by time (PostgreSQL): partitions made ahead and on demand, the DEFAULT
partition as a safety net, old partitions dropped and counted, duplicates found across partitions, and
pruning that gives way to ingest instead of queueing in front of it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from healthsync import ingest, partitions
from healthsync.choices import ExceptionKind, MessageStatus
from healthsync.ingest import InboundItem, store_messages
from healthsync.models import CanonicalEvent, Connector, ExceptionItem, Message, PruneRun
from healthsync.models.core import MessageKey
from healthsync.retention import prune
from healthsync.seed import seed_reference_config

pytestmark = [
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the store is partitioned on PostgreSQL only"
    ),
]


@pytest.fixture
def ehr(db: None) -> Connector:
    seed_reference_config()
    partitions.ingest_coverage.reset()
    return Connector.objects.get(code="ehr-adt-mllp")


def _item(connector: Connector, control_id: str) -> InboundItem:
    raw = f"MSH|^~\\&|EPIC|GENHOSP|HS|HS|20260101||ADT^A01|{control_id}|P|2.5.1\r".encode()
    return InboundItem(connector.pk, raw, "EPIC^GENHOSP", control_id, "ADT^A01")


def _home(message_id: int) -> str:
    """The partition a message's row lives in."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM healthsync_message WHERE id = %s", [message_id])
        return cursor.fetchone()[0]


def _names() -> list[str]:
    with connection.cursor() as cursor:
        return [p.name for p in partitions.list_partitions(cursor)]


def _fill(connector: Connector, start: datetime, count: int, status: str = MessageStatus.PROCESSED) -> None:
    """`count` stored messages received on the day starting at `start`, written by the database itself."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO healthsync_message (connector_id, received_at, raw, sha256, sender, control_id, "
            "message_type, status, lane, business_key, error, attempts, claimed_by) "
            "SELECT %s, %s + (n %% 86000) * interval '1 second', convert_to(repeat('x', 300), 'UTF8'), "
            "md5(n::text), 'EPIC^GENHOSP', 'F' || n, 'ADT^A01', %s, 'clinical', '', '', 0, '' "
            "FROM generate_series(1, %s) AS n",
            [connector.pk, start, status, count],
        )


def test_the_current_and_next_ranges_are_partitions_beside_a_default(ehr: Connector) -> None:
    now = timezone.now()
    start, end = partitions.range_for(now)
    assert partitions.partition_name(start) in _names()
    assert partitions.partition_name(end) in _names()
    message = store_messages([_item(ehr, "P1")])[0]
    assert _home(message.message_id) == partitions.partition_name(start)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [partitions.DEFAULT_PARTITION])
        assert cursor.fetchone()[0]


def test_the_default_partition_catches_a_row_no_range_holds_and_gives_it_up_later(ehr: Connector) -> None:
    later = timezone.now() + timedelta(days=40)
    message = Message.objects.create(connector=ehr, raw=b"x", sha256="0", received_at=later)
    assert _home(message.pk) == partitions.DEFAULT_PARTITION

    with connection.cursor() as cursor:
        created = partitions.ensure_partitions(cursor, now=later, ahead=0)
    assert [p.name for p in created] == [partitions.partition_name(partitions.range_for(later)[0])]
    assert _home(message.pk) == created[0].name
    assert Message.objects.get(pk=message.pk).received_at == later


def test_ingest_creates_the_partition_it_needs_on_demand(ehr: Connector, monkeypatch) -> None:
    later = timezone.now() + timedelta(days=9)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert partitions.partition_name(partitions.range_for(later)[0]) not in _names()

    outcome = store_messages([_item(ehr, "D1")])[0]
    assert _home(outcome.message_id) == partitions.partition_name(partitions.range_for(later)[0])


@pytest.mark.django_db(transaction=True)  # the listener's connection commits on its own
def test_the_listener_connection_creates_the_partition_it_needs_too(ehr: Connector, monkeypatch) -> None:
    # The listener writes on its own psycopg connection, whose cursors bind parameters on the server.
    later = timezone.now() + timedelta(days=12)
    monkeypatch.setattr(timezone, "now", lambda: later)
    monkeypatch.setattr(partitions.ingest_coverage, "until", None)
    name = partitions.partition_name(partitions.range_for(later)[0])
    raw = ingest.connect()
    try:
        outcome = store_messages([_item(ehr, "D2")], raw_connection=raw)[0]
        assert _home(outcome.message_id) == name
    finally:
        raw.execute(f'DROP TABLE IF EXISTS "{name}"')  # committed DDL: leave no partition behind
        raw.close()


def test_partitions_follow_the_configured_size_and_fill_gaps_only(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_MESSAGE_PARTITION_DAYS = 7
    moment = datetime(2031, 3, 4, 12, tzinfo=UTC)
    with connection.cursor() as cursor:
        first = partitions.ensure_partitions(cursor, now=moment, ahead=1)
        again = partitions.ensure_partitions(cursor, now=moment, ahead=1)
    assert [(p.end - p.start).days for p in first] == [7, 7]
    assert first[0].start <= moment < first[0].end and first[1].start == first[0].end
    assert again == []


def test_duplicates_are_detected_across_partitions(ehr: Connector) -> None:
    first = store_messages([_item(ehr, "X1")])[0]
    old = timezone.now() - timedelta(days=12)
    with connection.cursor() as cursor:
        partitions.ensure_partitions(cursor, now=old, ahead=0)
    Message.objects.filter(pk=first.message_id).update(received_at=old)
    assert _home(first.message_id) == partitions.partition_name(partitions.range_for(old)[0])

    copy = store_messages([_item(ehr, "X1")])[0]
    assert copy.status == MessageStatus.DUPLICATE and copy.duplicate_of == first.message_id
    assert _home(copy.message_id) != _home(first.message_id)
    assert MessageKey.objects.get().message_id == first.message_id


def test_an_old_partition_is_dropped_whole_and_counted(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_RETENTION_DAYS = 30
    old = partitions.range_for(timezone.now() - timedelta(days=45))[0]
    with connection.cursor() as cursor:
        partitions.ensure_partitions(cursor, now=old, ahead=0)
    _fill(ehr, old, 300, MessageStatus.PROCESSED)
    _fill(ehr, old, 20, MessageStatus.FAILED)  # errored messages go like any other
    keyed = store_messages([_item(ehr, "K1"), _item(ehr, "K2")])
    Message.objects.filter(pk__in=[o.message_id for o in keyed]).update(
        received_at=old + timedelta(hours=1), status=MessageStatus.PROCESSED
    )
    queued, held, linked = Message.objects.filter(received_at__lt=old + timedelta(days=1)).order_by("id")[:3]
    Message.objects.filter(pk=queued.pk).update(status=MessageStatus.RECEIVED)
    ExceptionItem.objects.create(kind=ExceptionKind.MAPPING_FAILED, reason="r", message=held)
    event = CanonicalEvent.objects.create(
        type="t", source="s", subject="V", idempotency_key="e", message=linked
    )
    replay = store_messages([_item(ehr, "R1")])[0]
    Message.objects.filter(pk=replay.message_id).update(replay_of=linked)
    young = store_messages([_item(ehr, "Y1")])[0]
    name = partitions.partition_name(old)

    run = prune()

    assert name not in _names()
    assert run.counts["_partitions"][name] == 320
    assert run.counts["ehr-adt-mllp"] == {"processed": 300, "failed": 20}
    assert run.messages_deleted == 320
    assert f"partition {name}: 320 dropped (older than 30 days), 2 kept" in run.log
    # The queued row and the one an open exception holds moved to the DEFAULT partition, unchanged.
    assert {_home(queued.pk), _home(held.pk)} == {partitions.DEFAULT_PARTITION}
    assert Message.objects.get(pk=held.pk).received_at == held.received_at
    assert set(Message.objects.values_list("pk", flat=True)) == {
        queued.pk,
        held.pk,
        replay.message_id,
        young.message_id,
    }
    event.refresh_from_db()
    assert event.message_id is None
    assert Message.objects.get(pk=replay.message_id).replay_of_id is None
    assert set(MessageKey.objects.values_list("key", flat=True)) == {
        ingest.dedupe_key(ehr.pk, "EPIC^GENHOSP", c) for c in ("R1", "Y1")
    }
    # A resend of a pruned message's control id is a first copy again.
    assert store_messages([_item(ehr, "K1")])[0].status == MessageStatus.RECEIVED


def test_a_dry_run_counts_a_partition_and_drops_nothing(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_RETENTION_DAYS = 10
    old = partitions.range_for(timezone.now() - timedelta(days=20))[0]
    with connection.cursor() as cursor:
        partitions.ensure_partitions(cursor, now=old, ahead=0)
    _fill(ehr, old, 50)
    run = prune(dry_run=True)
    assert run.messages_deleted == 50 and run.counts["_partitions"][partitions.partition_name(old)] == 50
    assert partitions.partition_name(old) in _names()
    assert Message.objects.count() == 50


def test_a_shorter_status_retention_deletes_rows_inside_a_partition_that_stays(
    ehr: Connector, settings
) -> None:
    from healthsync.models import RetentionPolicy

    settings.HEALTHSYNC_RETENTION_DAYS = 30
    RetentionPolicy.objects.create(connector=ehr, status=MessageStatus.PROCESSED, keep_days=3)
    old = partitions.range_for(timezone.now() - timedelta(days=6))[0]
    with connection.cursor() as cursor:
        partitions.ensure_partitions(cursor, now=old, ahead=0)
    _fill(ehr, old, 40, MessageStatus.PROCESSED)
    _fill(ehr, old, 5, MessageStatus.FAILED)

    run = prune(batch_size=16)
    assert partitions.partition_name(old) in _names()
    assert partitions.partition_name(old) not in run.counts.get("_partitions", {})
    assert run.counts["ehr-adt-mllp"] == {"processed": 40}
    assert set(Message.objects.values_list("status", flat=True)) == {MessageStatus.FAILED}


def test_the_longest_keep_time_of_any_connector_and_status_holds_a_partition(
    ehr: Connector, settings
) -> None:
    from healthsync.models import RetentionPolicy

    settings.HEALTHSYNC_RETENTION_DAYS = 10
    RetentionPolicy.objects.create(connector=None, status=MessageStatus.FAILED, keep_days=60)
    old = partitions.range_for(timezone.now() - timedelta(days=20))[0]
    with connection.cursor() as cursor:
        partitions.ensure_partitions(cursor, now=old, ahead=0)
    _fill(ehr, old, 10, MessageStatus.PROCESSED)
    _fill(ehr, old, 3, MessageStatus.FAILED)
    run = prune()
    assert partitions.partition_name(old) in _names()
    assert run.messages_deleted == 10 and Message.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_pruning_gives_way_to_ingest_and_ingest_keeps_going(settings) -> None:
    """A reader holds the message table: the detach waits at most lock_timeout, retries, gives up for this run;
    meanwhile, and while a large partition is dropped, every batch of the listener is stored."""
    seed_reference_config()
    partitions.ingest_coverage.reset()
    ehr = Connector.objects.get(code="ehr-adt-mllp")
    settings.HEALTHSYNC_RETENTION_DAYS = 30
    settings.HEALTHSYNC_PARTITION_LOCK_TIMEOUT_MS = 100
    old = partitions.range_for(timezone.now() - timedelta(days=50))[0]
    with connection.cursor() as cursor:
        partitions.ensure_partitions(cursor, now=old, ahead=0)
    _fill(ehr, old, 5000)
    name = partitions.partition_name(old)

    stored: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def listen() -> None:
        from django.db import connection as thread_connection

        n = 0
        try:
            while not stop.is_set():
                n += 1
                outcomes = store_messages([_item(ehr, f"L{n}-{i}") for i in range(10)])
                stored.extend(o.message_id for o in outcomes)
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)
        finally:
            thread_connection.close()

    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    listener = threading.Thread(target=listen)
    with psycopg.connect(**params) as reader:
        reader.execute("SELECT count(*) FROM healthsync_message")  # holds ACCESS SHARE until rollback
        listener.start()
        busy = prune()
        during = len(stored)
        reader.rollback()
    assert f"partition {name}: busy, left for the next run" in busy.log
    assert name in _names() and during > 0

    dropped = prune()
    stop.set()
    listener.join(timeout=30)
    assert not errors, errors
    assert dropped.counts["_partitions"][name] == 5000
    assert name not in _names()
    assert Message.objects.filter(pk__in=stored).count() == len(stored) > during
    assert PruneRun.objects.count() == 2


def test_a_partition_detached_by_an_interrupted_run_is_dropped_by_the_next(ehr: Connector, settings) -> None:
    settings.HEALTHSYNC_RETENTION_DAYS = 30
    old = partitions.range_for(timezone.now() - timedelta(days=40))[0]
    with connection.cursor() as cursor:
        partitions.ensure_partitions(cursor, now=old, ahead=0)
    _fill(ehr, old, 25)
    name = partitions.partition_name(old)
    leftover = partitions.PRUNING_PREFIX + name.removeprefix(partitions.TABLE + "_")
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE healthsync_message DETACH PARTITION "{name}"')
        cursor.execute(f'ALTER TABLE "{name}" RENAME TO "{leftover}"')
    run = prune()
    assert run.counts["_partitions"][leftover] == 25
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [leftover])
        assert cursor.fetchone()[0] is None
