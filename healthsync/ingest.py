"""Storing inbound messages before they are acknowledged: group commit, dedupe, then a kick to the worker.

Protocol-neutral: listeners (MLLP, HTTP, file pollers) hand over what they read from the wire and answer the
sender only after `store_messages` returns, i.e. after the commit. Many messages go in one transaction so
that the commit cost is shared; the rows are the work queue, so nothing else needs writing.

Dedupe: the first copy of (connector, sender, control id) owns `Message.dedupe_key`, which is unique; a later
copy is kept with status duplicate and `duplicate_of` pointing at the first, and never processed. Two
listener processes racing on one control id are settled by the unique index.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from healthsync.choices import Lane, MessageStatus
from healthsync.models import Message

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


def store_messages(items: Sequence[InboundItem]) -> list[StoreOutcome]:
    """Store `items` in one transaction, deduplicated; outcomes in the same order. Kicks the worker after commit.

    Raises the database error (nothing stored) when the commit fails: the caller must then not acknowledge.
    """
    if not items:
        return []
    with transaction.atomic():
        outcomes = _store(items)
        if any(o.status == MessageStatus.RECEIVED for o in outcomes):
            transaction.on_commit(kick_worker)
    return outcomes


def _store(items: Sequence[InboundItem]) -> list[StoreOutcome]:
    keys = [_key_for(item) for item in items]
    wanted = {k for k in keys if k is not None}
    existing = (
        dict(Message.objects.filter(dedupe_key__in=wanted).values_list("dedupe_key", "id")) if wanted else {}
    )
    # First pass: every item that is not a copy of one already stored or earlier in this batch.
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
    try:
        with transaction.atomic():
            rows = _insert([_row(items[i], key=keys[i], status=items[i].status) for i in firsts])
    except IntegrityError:
        # Another listener stored one of these keys since we looked: settle row by row.
        logger.info("ingest: dedupe race on a batch of %d, storing row by row", len(items))
        return _store_row_by_row(items, keys)
    outcomes: dict[int, StoreOutcome] = {}
    for index, row in zip(firsts, rows, strict=True):
        outcomes[index] = StoreOutcome(row.pk, row.status)
        if keys[index] is not None:
            existing.setdefault(keys[index], row.pk)
    if copies:
        dup_rows = _insert(
            [
                _row(items[i], key=None, status=MessageStatus.DUPLICATE, duplicate_of=existing[keys[i]])
                for i in copies
            ]
        )
        for index, row in zip(copies, dup_rows, strict=True):
            outcomes[index] = StoreOutcome(row.pk, MessageStatus.DUPLICATE, row.duplicate_of_id)
    return [outcomes[i] for i in range(len(items))]


_COPY_FIELDS = [f for f in Message._meta.concrete_fields if not f.primary_key]
_COPY_SQL = "COPY {table} ({columns}) FROM STDIN".format(
    table=connection.ops.quote_name(Message._meta.db_table),
    columns=", ".join(["id", *(connection.ops.quote_name(f.column) for f in _COPY_FIELDS)]),
)
# Plain values COPY adapts as they are; anything needing get_db_prep_save (JSON, custom fields) takes the ORM path.
_COPYABLE = all(
    f.get_internal_type()
    in {
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
    for f in _COPY_FIELDS
)


def _insert(rows: list[Message]) -> list[Message]:
    """Insert rows and set their primary keys: COPY on PostgreSQL (the ORM's per-value work dominates)."""
    if not rows:
        return rows
    if connection.vendor != "postgresql" or not _COPYABLE:
        return Message.objects.bulk_create(rows)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [Message._meta.db_table, len(rows)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        attnames = [f.attname for f in _COPY_FIELDS]
        with connection.wrap_database_errors, cursor.cursor.copy(_COPY_SQL) as copy:
            for pk, row in zip(ids, rows, strict=True):
                row.pk = pk
                copy.write_row([pk, *(getattr(row, name) for name in attnames)])
    for row in rows:
        row._state.adding = False
    return rows


def _store_row_by_row(items: Sequence[InboundItem], keys: list[str | None]) -> list[StoreOutcome]:
    outcomes: list[StoreOutcome] = []
    for item, key in zip(items, keys, strict=True):
        if key is not None:
            first = Message.objects.filter(dedupe_key=key).values_list("id", flat=True).first()
            if first is None:
                try:
                    with transaction.atomic():
                        row = _row(item, key=key, status=item.status)
                        row.save(force_insert=True)
                    outcomes.append(StoreOutcome(row.pk, row.status))
                    continue
                except IntegrityError:
                    # On PostgreSQL the insert waited for the other transaction; its row is committed now.
                    first = Message.objects.filter(dedupe_key=key).values_list("id", flat=True).first()
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
    acknowledgement waits for the enqueue."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._available: bool | None = None

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
            self._wanted.clear()
            try:
                self._enqueue()
            finally:
                # Do not hold a connection between kicks (it would outlive test databases and idle on PG).
                thread_connection.close()
            time.sleep(self.interval)

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
