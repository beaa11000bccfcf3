"""Storing inbound messages before they are acknowledged: group commit, dedupe, then a kick to the worker.

Protocol-neutral: listeners (MLLP, HTTP, file pollers) hand over what they read from the wire and answer the
sender only after `store_messages` returns, i.e. after the commit. Many messages go in one transaction so
that the commit cost is shared; the rows are the work queue, so nothing else needs writing.

Dedupe: the first copy of (connector, sender, control id) owns its key, a MessageKey row written in the same
transaction (the message store is partitioned by time on PostgreSQL, where a unique index could not span the
partitions); a later copy is kept with status duplicate and `duplicate_of` pointing at the first, and never
processed. Two listener processes racing on one control id are settled by MessageKey's primary key.

On PostgreSQL each process makes sure, once per partition range, that a partition holds the current time
(healthsync.partitions): the DEFAULT partition would take the rows anyway, but it is meant to stay empty.
"""

from __future__ import annotations

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
    `raw_connection` (an autocommit psycopg connection, PostgreSQL only) takes the listener's fast path:
    the same statements on that connection, without the ORM.
    """
    if not items:
        return []
    if connection.vendor == "postgresql":
        partitions.ingest_coverage.ensure(_runner(raw_connection), timezone.now())
    if raw_connection is not None and _raw_sql() is not None:
        try:
            return _store_raw(raw_connection, items)
        except Exception as exc:
            if not isinstance(exc, _KeyRace) and getattr(exc, "sqlstate", None) != "23505":
                raise
            # Another listener stored one of these keys after we looked: the ORM path settles it row by row.
    keys = [_key_for(item) for item in items]
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


def _runner(raw_connection: Any) -> Any:
    """Run fn(cursor) in a transaction on the connection this batch is written with."""

    def run(fn: Any) -> Any:
        if raw_connection is not None:
            with raw_connection.transaction(), raw_connection.cursor() as cursor:
                return fn(cursor)
        with transaction.atomic(), connection.cursor() as cursor:
            return fn(cursor)

    return run


def _kick_after_commit(outcomes: list[StoreOutcome]) -> None:
    if any(o.status == MessageStatus.RECEIVED for o in outcomes):
        transaction.on_commit(kick_worker)


_Spec = tuple[InboundItem, str | None, str, int | None]  # item, dedupe key, status, duplicate of

# Fields whose Python values COPY takes as they are; anything else (JSON, custom) makes the ORM path the safe one.
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


@functools.cache
def _copy_sql() -> str | None:
    if not all(f.get_internal_type() in _PLAIN_TYPES for f in _FIELDS):
        return None
    quote = connection.ops.quote_name
    columns = ", ".join([quote(Message._meta.pk.column), *(quote(f.column) for f in _FIELDS)])
    return f"COPY {quote(Message._meta.db_table)} ({columns}) FROM STDIN"


def _claim_sql(sequence: str) -> str:
    """One round trip on PostgreSQL: an id for every item (in arrival order, which per-key ordering relies
    on), each new key claimed with the id of its first item, and the ids of keys stored before. Parameters:
    [sequence args,] item count, keys, 1-based position of each key's first item, keys. Rows: (NULL, id,
    position, NULL) per item, (key, id, NULL, True) claimed, (key, id, NULL, False) stored before.

    MessageKey's primary key settles a race with another listener: ON CONFLICT waits for its transaction and
    then skips the key, which this statement's snapshot cannot see (the caller then settles row by row).
    """
    table = connection.ops.quote_name(MessageKey._meta.db_table)
    # The table name comes from the model; every value is a parameter.
    return (
        f"WITH ids AS MATERIALIZED (SELECT n, nextval({sequence}) AS id FROM generate_series(1, %s) AS n), "  # noqa: S608
        f"claimed AS (INSERT INTO {table} (key, message_id) "
        "SELECT k.key, ids.id FROM unnest(%s::varchar[], %s::int[]) AS k(key, n) JOIN ids USING (n) "
        "ON CONFLICT DO NOTHING RETURNING key, message_id) "
        "SELECT NULL, id, n, NULL FROM ids "
        "UNION ALL SELECT key, message_id, NULL, true FROM claimed "
        f"UNION ALL SELECT key, message_id, NULL, false FROM {table} WHERE key = ANY(%s::varchar[])"
    )


def _claim_params(keys: list[str | None]) -> tuple[list[str], list[int]]:
    """The batch's distinct keys and the 1-based position of each one's first item."""
    firsts: dict[str, int] = {}
    for position, key in enumerate(keys, start=1):
        if key is not None:
            firsts.setdefault(key, position)
    wanted = sorted(firsts)  # one order for every listener, so two claims never deadlock
    return wanted, [firsts[k] for k in wanted]


class _KeyRace(Exception):
    """Another listener stored one of the batch's keys while the claim waited for it."""


_Plan = tuple[int, InboundItem, str | None, str, int | None]  # id, item, key owned, status, duplicate of


def _assign(items: Sequence[InboundItem], keys: list[str | None], rows: list[tuple[Any, ...]]) -> list[_Plan]:
    """Give each item its id and outcome from the claim's rows, in the items' order."""
    ids: dict[int, int] = {}
    claimed: dict[str, int] = {}
    existing: dict[str, int] = {}
    for key, pk, position, is_new in rows:
        if key is None:
            ids[position] = pk
        elif is_new:
            claimed[key] = pk
        else:
            existing[key] = pk
    plan: list[_Plan] = []
    for position, (item, key) in enumerate(zip(items, keys, strict=True), start=1):
        pk = ids[position]
        if key is None:
            plan.append((pk, item, None, item.status, None))
        elif claimed.get(key) == pk:
            plan.append((pk, item, key, item.status, None))
        elif key in claimed or key in existing:
            plan.append((pk, item, None, MessageStatus.DUPLICATE, claimed.get(key) or existing[key]))
        else:
            raise _KeyRace("a key was stored by another transaction during the claim")
    return plan


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
        "dedupe_key": key,
        "duplicate_of_id": duplicate_of,
    }


def _store(items: Sequence[InboundItem], keys: list[str | None]) -> list[StoreOutcome]:
    wanted = sorted({k for k in keys if k is not None})
    copy_sql = _copy_sql() if connection.vendor == "postgresql" else None
    now = timezone.now()
    if copy_sql is not None:
        claim_keys, positions = _claim_params(keys)
        with connection.cursor() as cursor:
            cursor.execute(
                _claim_sql("pg_get_serial_sequence(%s, %s)"),
                [
                    Message._meta.db_table,
                    Message._meta.pk.column,
                    len(items),
                    claim_keys,
                    positions,
                    claim_keys,
                ],
            )
            rows = cursor.fetchall()
        try:
            plan = _assign(items, keys, rows)
        except _KeyRace as exc:
            raise IntegrityError(str(exc)) from None
        # Ids are known up front, so first copies and later ones go in one COPY.
        _copy(copy_sql, [(pk, (item, key, status, first)) for pk, item, key, status, first in plan], now)
        return [StoreOutcome(pk, status, first) for pk, _item, _key, status, first in plan]
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


def _copy(sql: str, rows: list[tuple[int, _Spec]], now: datetime) -> None:
    """COPY rows in: the ORM's per-value work (even array parameters) costs more than the database here."""
    defaults = {f.attname: f.get_default() for f in _FIELDS}
    names = [f.attname for f in _FIELDS]
    # Django wraps execute() errors only: wrap COPY's too, so a unique violation is an IntegrityError.
    with connection.cursor() as cursor, connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
        for pk, spec in rows:
            values = _values(spec, now)
            copy.write_row([pk, *(values[n] if n in values else defaults[n] for n in names)])


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


@functools.cache
def _raw_sql() -> tuple[str, str] | None:
    """The fast path's two statements: claim keys + reserve ids (one round trip), and COPY."""
    copy_sql = _copy_sql()
    if copy_sql is None:
        return None
    table = Message._meta.db_table
    claim = _claim_sql(f"pg_get_serial_sequence('{table}', '{Message._meta.pk.column}')")
    return claim, copy_sql


def _store_raw(conn: Any, items: Sequence[InboundItem]) -> list[StoreOutcome]:
    """The listener's fast path on PostgreSQL: its own psycopg connection, no ORM, one transaction.

    Same rows and outcomes as `_store`: ids reserved, new keys claimed and stored keys read in one round
    trip, then one COPY of first copies and duplicates alike, then the commit.
    """
    sql = _raw_sql()
    assert sql is not None
    claim, copy_sql = sql
    keys = [_key_for(item) for item in items]
    claim_keys, positions = _claim_params(keys)
    now = timezone.now()
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(claim, [len(items), claim_keys, positions, claim_keys])
        plan = _assign(items, keys, cursor.fetchall())
        with cursor.copy(copy_sql) as copy:
            for pk, item, key, status, first in plan:
                copy.write_row(_copy_row(pk, item, key, status, first, now))
    outcomes = [StoreOutcome(pk, status, first) for pk, _item, _key, status, first in plan]
    if any(o.status == MessageStatus.RECEIVED for o in outcomes):
        kick_worker()
    return outcomes


@functools.cache
def _copy_layout() -> tuple[list[str], dict[str, Any]]:
    names = [f.attname for f in _FIELDS]
    return names, {f.attname: f.get_default() for f in _FIELDS}


def _copy_row(
    pk: int, item: InboundItem, key: str | None, status: str, duplicate_of: int | None, now: datetime
) -> list[Any]:
    names, defaults = _copy_layout()
    values = _values((item, key, status, duplicate_of), now)
    return [pk, *(values[n] if n in values else defaults[n] for n in names)]


class _Kicker:
    """Debounced worker kick: callers only raise a flag; one background thread enqueues at most once per
    interval, and a flag raised meanwhile is served after it, so no batch is left without a kick and no
    acknowledgement waits for the enqueue."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._available: bool | None = None
        self._sending = False

    def __call__(self) -> None:
        self._wanted.set()
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="ingest-kicker", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        from django.db import connection as thread_connection

        while self._wanted.wait(timeout=60):
            self._sending = True
            self._wanted.clear()
            try:
                self._enqueue()
            finally:
                # Do not hold a connection between kicks (it would outlive test databases and idle on PG).
                thread_connection.close()
                self._sending = False
            time.sleep(self.interval)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every kick asked for has been sent: listeners call this when they stop."""
        deadline = time.monotonic() + timeout
        while (self._wanted.is_set() or self._sending) and time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                return
            time.sleep(0.01)

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
