"""Storing inbound messages before they are acknowledged: group commit, dedupe, then a kick to the worker.

Protocol-neutral: listeners (MLLP, HTTP, file pollers) hand over what they read from the wire and answer the
sender only after `store_messages` returns, i.e. after the commit. Many messages go in one transaction so
that the commit cost is shared; the rows are the work queue, so nothing else needs writing. On PostgreSQL a
whole batch (ids, keys, rows) is one statement: on the listener's autocommit connection the batch costs one
round trip, which is what a sender waiting for each ACK on one connection sees.

Dedupe: the first copy of (connector, sender, control id) owns its key, a MessageKey row written in the same
transaction (the message store is partitioned by time on PostgreSQL, where a unique index could not span the
partitions); a later copy is kept with status duplicate and `duplicate_of` pointing at the first, and never
processed. Two listener processes racing on one control id are settled by MessageKey's primary key.

On PostgreSQL each process makes sure, once per partition range, that a partition holds the current time
(healthsync.partitions): the DEFAULT partition would take the rows anyway, but it is meant to stay empty.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from healthsync import partitions
from healthsync.choices import Lane, MessageStatus
from healthsync.models import Message
from healthsync.models.core import MessageKey
from healthsync.pipeline import triage

logger = logging.getLogger(__name__)

PROCESS_TASK = "healthsync.tasks.process_pending"
KICK_INTERVAL_SECONDS = 0.25

_SENDER_MAX = Message._meta.get_field("sender").max_length or 200
_CONTROL_MAX = Message._meta.get_field("control_id").max_length or 200
_TYPE_MAX = Message._meta.get_field("message_type").max_length or 40


@dataclass(frozen=True)
class InboundItem:
    """One payload read from the wire, with what the listener could tell about it."""

    connector_id: int
    raw: bytes
    sender: str = ""
    control_id: str = ""
    message_type: str = ""
    lane: str = Lane.CLINICAL
    status: str = MessageStatus.RECEIVED  # received, or rejected at the door
    error: str = ""
    # The key its events are ordered by (healthsync.pipeline.triage); None: not read yet (set on storing).
    sequence_key: str | None = None


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one item: its row, its status (received, duplicate, rejected) and the first copy."""

    message_id: int
    status: str
    duplicate_of: int | None = None

    @property
    def is_duplicate(self) -> bool:
        return self.status == MessageStatus.DUPLICATE


def dedupe_key(connector_id: int, sender: str, control_id: str) -> str:
    return f"{connector_id}|{sender[:_SENDER_MAX]}|{control_id[:_CONTROL_MAX]}"


def _row(item: InboundItem, *, key: str | None, status: str, duplicate_of: int | None = None) -> Message:
    return Message(
        received_at=timezone.now(),
        connector_id=item.connector_id,
        raw=item.raw,
        sha256=hashlib.sha256(item.raw).hexdigest(),
        sender=item.sender[:_SENDER_MAX],
        control_id=item.control_id[:_CONTROL_MAX],
        message_type=item.message_type[:_TYPE_MAX],
        lane=item.lane,
        status=status,
        error=item.error,
        sequence_key=item.sequence_key,
        dedupe_key=key,
        duplicate_of_id=duplicate_of,
    )


def _key_for(item: InboundItem) -> str | None:
    # Rejected messages never claim a key: the corrected resend with the same control id must get through.
    if item.status != MessageStatus.RECEIVED or not item.control_id:
        return None
    return dedupe_key(item.connector_id, item.sender, item.control_id)


def store_messages(items: Sequence[InboundItem], *, raw_connection: Any = None) -> list[StoreOutcome]:
    """Store `items` in one transaction, deduplicated; outcomes in the same order. Kicks the worker after commit.

    Raises the database error (nothing stored) when the commit fails: the caller must then not acknowledge.
    `raw_connection` (an autocommit psycopg connection, PostgreSQL only) takes the listener's fast path: the
    batch statement on that connection, without the ORM, committed by the database when the statement ends,
    so that a batch costs one round trip.
    """
    if not items:
        return []
    items = [_triaged(item) for item in items]
    if connection.vendor == "postgresql":
        partitions.ingest_coverage.ensure(_runner(raw_connection), timezone.now())
    keys = [_key_for(item) for item in items]
    if raw_connection is not None and _batch_sql() is not None:
        try:
            with contextlib.nullcontext() if raw_connection.autocommit else raw_connection.transaction():
                outcomes = _store_in_one_statement(raw_connection.cursor(), items, keys)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != "23505":
                raise
            # Another listener stored one of these keys after we looked: the ORM path settles it.
            logger.info("ingest: dedupe race on a batch of %d, storing it again", len(items))
        else:
            if any(o.status == MessageStatus.RECEIVED for o in outcomes):
                kick_worker()
            return outcomes
    try:
        with transaction.atomic():
            outcomes = _store(items, keys)
            _kick_after_commit(outcomes)
    except IntegrityError:
        # Another listener stored one of these keys after we looked: settle the batch again, row by row.
        logger.info("ingest: dedupe race on a batch of %d, storing row by row", len(items))
        with transaction.atomic():
            outcomes = _store_row_by_row(items, keys)
            _kick_after_commit(outcomes)
    return outcomes


def connect() -> Any:
    """A psycopg connection for `store_messages(raw_connection=...)`: autocommit, to the default database.

    The batch statement is prepared after a few runs (psycopg's default threshold) and kept on a generic plan:
    planning it (a CTE inserting into a partitioned table) costs more than running it, and custom plans,
    which PostgreSQL would otherwise keep choosing, plan it again on every batch. A generic plan is made
    once, on the table sizes of the moment: made while MessageKey is small (a new install, or a server whose
    autovacuum never analyzes), it would scan the whole table for every batch for as long as the connection
    lives. This connection runs nothing but this statement, so scans, hash and merge joins are turned off on
    it: a batch's few hundred keys are always looked up in MessageKey's index, whatever size it was planned at.
    """
    import psycopg

    params = connection.get_connection_params()
    for name in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(name, None)
    conn = psycopg.connect(**params, autocommit=True)
    try:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        for method in ("seqscan", "hashjoin", "mergejoin"):
            conn.execute(f"SET enable_{method} = off")
    except Exception:
        conn.close()
        raise
    return conn


def _runner(raw_connection: Any) -> Any:
    """Run fn(cursor) in a transaction on the connection this batch is written with."""

    def run(fn: Any) -> Any:
        if raw_connection is not None:
            with raw_connection.transaction(), raw_connection.cursor() as cursor:
                return fn(cursor)
        with transaction.atomic(), connection.cursor() as cursor:
            return fn(cursor)

    return run


def _triaged(item: InboundItem) -> InboundItem:
    """The item with its sequence key and lane read now, so that no worker has to read and rewrite its row.

    Messages refused at the door are never processed and need neither.
    """
    if item.status != MessageStatus.RECEIVED or item.sequence_key is not None:
        return item
    key, lane = triage(item.raw, message_type=item.message_type, connector_lane=item.lane)
    return dataclasses.replace(item, sequence_key=key, lane=lane)


def _kick_after_commit(outcomes: list[StoreOutcome]) -> None:
    if any(o.status == MessageStatus.RECEIVED for o in outcomes):
        transaction.on_commit(kick_worker)


_Spec = tuple[InboundItem, str | None, str, int | None]  # item, dedupe key, status, duplicate of

# Field types whose Python values the one-statement path binds as they are; anything else (JSON, custom) makes
# the ORM path the safe one.
_PLAIN_TYPES = {
    "CharField",
    "TextField",
    "SlugField",
    "BinaryField",
    "DateTimeField",
    "ForeignKey",
    "PositiveSmallIntegerField",
    "PositiveIntegerField",
    "IntegerField",
    "SmallIntegerField",
    "BigIntegerField",
    "BooleanField",
}
_FIELDS = [f for f in Message._meta.concrete_fields if not f.primary_key]
# What each item brings, bound as one array per column (element i is item i); the rest are set by the statement.
_ITEM_COLUMNS = (
    "connector_id",
    "raw",
    "sender",
    "control_id",
    "message_type",
    "lane",
    "status",
    "error",
    "sequence_key",
)
_SET_BY_STATEMENT = {"received_at", "sha256", "status", "dedupe_key", "duplicate_of_id"}


@functools.cache
def _batch_sql() -> tuple[str, list[Any]] | None:
    """The statement that stores a whole batch on PostgreSQL, and the constant parameters it ends with.

    One statement, so one round trip: on an autocommit connection it is its own transaction and returns only
    once committed. It reserves an id per item in arrival order (per-key ordering relies on it), claims each
    new key for the first item that has it (keys in sorted order, so two listeners never deadlock), reads the
    ids of keys stored before, and inserts every item: first copies with their key, later ones as duplicates
    of the first. Rows: (id, status, duplicate of) per item, in order.

    Parameters (_batch_params): one array per _ITEM_COLUMNS and one of dedupe keys, the duplicate status,
    received_at, then the constants this function returns (defaults of the columns nothing else sets).

    A race with another listener: ON CONFLICT waits for the other transaction and then skips the key, which
    this statement's snapshot cannot see. Such a key is inserted again without ON CONFLICT, which fails with a
    unique violation (23505): the batch is rolled back and the caller stores it again (see store_messages).
    """
    if not all(f.get_internal_type() in _PLAIN_TYPES for f in _FIELDS):
        return None
    quote = connection.ops.quote_name
    by_name = {f.attname: f for f in _FIELDS}
    message, keys = quote(Message._meta.db_table), quote(MessageKey._meta.db_table)
    pk = Message._meta.pk.column
    arrays = ", ".join(f"%b::{_array_type(by_name[c])}[]" for c in _ITEM_COLUMNS)
    key_type = _array_type(MessageKey._meta.pk)
    defaults = [f for f in _FIELDS if f.attname not in _SET_BY_STATEMENT and f.attname not in _ITEM_COLUMNS]
    columns = [
        pk,
        "received_at",
        *_ITEM_COLUMNS,
        "sha256",
        "dedupe_key",
        "duplicate_of_id",
        *(f.attname for f in defaults),
    ]
    default_values = ", ".join(f"%s::{f.db_type(connection)}" for f in defaults)
    item_names = ", ".join(f"i.{c}" for c in _ITEM_COLUMNS if c != "status")
    # Table and column names come from the models; every value is a parameter.
    sql = (
        "WITH items AS MATERIALIZED ("  # noqa: S608
        f"  SELECT i.*, nextval((SELECT pg_get_serial_sequence('{Message._meta.db_table}', '{pk}')::regclass)) AS id"
        f"  FROM unnest({arrays}, %b::{key_type}[]) WITH ORDINALITY AS i({', '.join(_ITEM_COLUMNS)}, key, n)"
        "  ORDER BY i.n), "
        f"claimed AS (INSERT INTO {keys} (key, message_id) "
        "  SELECT DISTINCT ON (key) key, id FROM items WHERE key IS NOT NULL ORDER BY key, n "
        "  ON CONFLICT DO NOTHING RETURNING key, message_id), "
        "plan AS MATERIALIZED ("
        f"  SELECT i.n, i.id, i.key, {item_names}, i.status AS item_status,"
        "    NULLIF(COALESCE(c.message_id, s.message_id), i.id) AS duplicate_of,"
        "    i.key IS NOT NULL AND c.message_id IS NULL AND s.message_id IS NULL AS raced"
        f"  FROM items i LEFT JOIN claimed c ON c.key = i.key LEFT JOIN {keys} s ON s.key = i.key), "
        f"raced AS (INSERT INTO {keys} (key, message_id) SELECT key, id FROM plan WHERE raced), "
        "outcome AS MATERIALIZED ("
        "  SELECT plan.*, CASE WHEN duplicate_of IS NULL THEN item_status ELSE %s END AS final_status,"
        "    CASE WHEN duplicate_of IS NULL THEN key END AS owned_key FROM plan), "
        f"stored AS (INSERT INTO {message} ({', '.join(quote(c) for c in columns)}) "
        f"  SELECT id, %s::timestamptz, {', '.join(c if c != 'status' else 'final_status' for c in _ITEM_COLUMNS)},"
        f"    encode(sha256(raw), 'hex'), owned_key, duplicate_of, {default_values} FROM outcome) "
        "SELECT id, final_status, duplicate_of FROM outcome ORDER BY n"
    )
    return sql, [f.get_db_prep_save(f.get_default(), connection) for f in defaults]


def _array_type(field: Any) -> str:
    # Text, not varchar(n): a cast to varchar(n) would cut a long value silently where the insert refuses it.
    if field.get_internal_type() in {"CharField", "TextField", "SlugField"}:
        return "text"
    return str(field.db_type(connection))


def _batch_params(items: Sequence[InboundItem], keys: list[str | None], now: datetime) -> list[Any]:
    sql = _batch_sql()
    assert sql is not None
    limits = {"sender": _SENDER_MAX, "control_id": _CONTROL_MAX, "message_type": _TYPE_MAX}
    arrays = [
        [getattr(item, c)[: limits[c]] for item in items]
        if c in limits
        else [getattr(item, c) for item in items]
        for c in _ITEM_COLUMNS
    ]
    return [*arrays, keys, MessageStatus.DUPLICATE, now, *sql[1]]


def _store_in_one_statement(
    cursor: Any, items: Sequence[InboundItem], keys: list[str | None]
) -> list[StoreOutcome]:
    """Run the batch statement on a psycopg cursor (server-side binding: the arrays go as binary)."""
    sql = _batch_sql()
    assert sql is not None
    cursor.execute(sql[0], _batch_params(items, keys, timezone.now()))
    return [StoreOutcome(pk, status, first) for pk, status, first in cursor.fetchall()]


def _values(spec: _Spec, now: datetime) -> dict[str, Any]:
    item, key, status, duplicate_of = spec
    return {
        "connector_id": item.connector_id,
        "received_at": now,
        "raw": item.raw,
        "sha256": hashlib.sha256(item.raw).hexdigest(),
        "sender": item.sender[:_SENDER_MAX],
        "control_id": item.control_id[:_CONTROL_MAX],
        "message_type": item.message_type[:_TYPE_MAX],
        "lane": item.lane,
        "status": status,
        "error": item.error,
        "sequence_key": item.sequence_key,
        "dedupe_key": key,
        "duplicate_of_id": duplicate_of,
    }


def _store(items: Sequence[InboundItem], keys: list[str | None]) -> list[StoreOutcome]:
    if connection.vendor == "postgresql" and _batch_sql() is not None:
        import psycopg

        connection.ensure_connection()
        # Django's own cursors bind on the client (values spelled into the SQL text): a plain psycopg cursor
        # sends the arrays as binary parameters. Wrapped so that a unique violation is an IntegrityError.
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            return _store_in_one_statement(cursor, items, keys)
    wanted = sorted({k for k in keys if k is not None})
    now = timezone.now()
    existing = (
        dict(MessageKey.objects.filter(key__in=wanted).values_list("key", "message_id")) if wanted else {}
    )
    # Every item that is not a copy of one already stored or earlier in this batch owns its key.
    firsts: list[int] = []
    copies: list[int] = []
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if key is not None and (key in existing or key in seen):
            copies.append(index)
        else:
            firsts.append(index)
            if key is not None:
                seen.add(key)
    outcomes: dict[int, StoreOutcome] = {}
    rows = Message.objects.bulk_create(
        [Message(**_values((items[i], keys[i], items[i].status, None), now)) for i in firsts]
    )
    for index, row in zip(firsts, rows, strict=True):
        outcomes[index] = StoreOutcome(row.pk, items[index].status)
        key = keys[index]
        if key is not None:
            existing.setdefault(key, row.pk)
    MessageKey.objects.bulk_create(
        [MessageKey(key=keys[i], message_id=rows_pk) for i, rows_pk in _owned(firsts, rows, keys)]
    )
    if copies:
        dup_rows = Message.objects.bulk_create(
            [
                Message(**_values((items[i], None, MessageStatus.DUPLICATE, existing[keys[i] or ""]), now))
                for i in copies
            ]
        )
        for index, row in zip(copies, dup_rows, strict=True):
            outcomes[index] = StoreOutcome(row.pk, MessageStatus.DUPLICATE, row.duplicate_of_id)
    return [outcomes[i] for i in range(len(items))]


def _owned(firsts: list[int], rows: list[Message], keys: list[str | None]) -> list[tuple[int, int]]:
    return [(i, row.pk) for i, row in zip(firsts, rows, strict=True) if keys[i] is not None]


def _store_row_by_row(items: Sequence[InboundItem], keys: list[str | None]) -> list[StoreOutcome]:
    outcomes: list[StoreOutcome] = []
    for item, key in zip(items, keys, strict=True):
        if key is not None:
            first = MessageKey.objects.filter(key=key).values_list("message_id", flat=True).first()
            if first is None:
                try:
                    with transaction.atomic():
                        row = _row(item, key=key, status=item.status)
                        row.save(force_insert=True)
                        MessageKey.objects.create(key=key, message_id=row.pk)
                    outcomes.append(StoreOutcome(row.pk, row.status))
                    continue
                except IntegrityError:
                    # On PostgreSQL the insert waited for the other transaction; its key is committed now.
                    first = MessageKey.objects.filter(key=key).values_list("message_id", flat=True).first()
                    if first is None:
                        raise
            row = _row(item, key=None, status=MessageStatus.DUPLICATE, duplicate_of=first)
            row.save(force_insert=True)
            outcomes.append(StoreOutcome(row.pk, MessageStatus.DUPLICATE, first))
        else:
            row = _row(item, key=None, status=item.status)
            row.save(force_insert=True)
            outcomes.append(StoreOutcome(row.pk, row.status))
    return outcomes


class _Kicker:
    """Debounced worker kick: callers only raise a flag; one background thread enqueues at most once per
    interval, and a flag raised meanwhile is served after it, so no batch is left without a kick and no
    acknowledgement waits for the enqueue.

    The thread keeps its database connection while kicks keep coming (a new connection per kick cost more
    than the kick itself, four times a second under steady load) and leaves, closing it, after `linger`
    seconds without one, or when `flush` asks.
    """

    def __init__(self, interval: float, linger: float = 2.0) -> None:
        self.interval = interval
        self.linger = linger
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._available: bool | None = None
        self._sending = False
        self._leaving = False

    def __call__(self) -> None:
        with self._lock:
            self._wanted.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ingest-kicker", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        from django.db import connection as thread_connection

        try:
            while True:
                self._wanted.wait(timeout=self.linger)
                # Leave under the lock, so that a kick asked for from now on starts a new thread.
                with self._lock:
                    if self._leaving or not self._wanted.is_set():
                        self._thread = None
                        return
                    self._wanted.clear()
                    self._sending = True
                try:
                    self._enqueue()
                finally:
                    self._sending = False
                time.sleep(self.interval)
        finally:
            # Do not hold a connection once kicks stop (it would outlive test databases and idle on PG).
            thread_connection.close()

    def flush(self, timeout: float = 5.0) -> None:
        """Send every kick asked for, then let the thread go with its connection: listeners call this when
        they stop (a kick asked for while it leaves is dropped; the worker also polls)."""
        deadline = time.monotonic() + timeout
        while (self._wanted.is_set() or self._sending) and time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                break
            time.sleep(0.01)
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                return
            self._leaving = True
            self._wanted.set()
        thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._leaving = False
            self._wanted.clear()

    def _enqueue(self) -> None:
        if self._available is None:
            try:
                self._available = importlib.util.find_spec("healthsync.tasks") is not None
            except ImportError:
                self._available = False
            if not self._available:
                logger.warning("ingest: %s is not available yet; the worker is not kicked", PROCESS_TASK)
        if not self._available:
            return
        try:
            from django_q.tasks import async_task

            async_task(PROCESS_TASK, task_name="ingest-kick", group="ingest")
        except Exception:
            # The messages are committed and the worker also polls: a failed kick only delays them.
            logger.exception("ingest: could not kick the worker")


kick_worker = _Kicker(KICK_INTERVAL_SECONDS)
