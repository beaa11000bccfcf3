"""The sync runtime's inbound half: claim received messages, parse, map, validate, emit canonical events, route.

Claiming. Any number of workers (processes, hosts) share the message store as their queue. A claim runs in
one short transaction that claimers take turns on (a PostgreSQL advisory lock; SQLite's write lock), with the
candidate rows read `FOR UPDATE SKIP LOCKED`. Every message has a business key it is ordered by
(`business_key_for`, the encounter, PV1-19) and a lane (`lane_for`): ingest reads both when it stores the
message (healthsync.ingest), and the claimer first *triages* the messages stored without them (replays).
It then picks messages lane by lane, clinical first, so that a flood of financial or batch (replay) work
never delays an admission or a discharge. Per-key order: a message is claimed
only when no earlier message (lower id) with the same key is still waiting or being processed elsewhere;
earlier waiting messages of that key are claimed with it, and a worker processes its batch in id order. So an
A13 (cancel discharge) is never applied before the A03 it cancels, however many workers run.

Processing. A batch is handled in chunks, one transaction per chunk: a message's event, the workflow changes
it causes and its new status commit together or not at all, and one bad message never rolls back another. A
chunk first runs without a savepoint per message (bad data is found before anything is written, and events,
deliveries and runs are inserted with ON CONFLICT, so a repeat is no error); only when something fails after
a write is the chunk rolled back and redone with one savepoint per message, which isolates the culprit. The
fast pass maps every message of the chunk first, inserts all their events in one statement and routes the
new ones in message order inside a unit of work (healthsync.unitofwork): the workflows read the runs of the
chunk's encounters together and write run updates, steps, deliveries and KPI dirty marks once, at the
chunk's end, in the same transaction. Bad data (unparseable bytes, missing required fields, a schema violation) fails the
message with an exception item naming the fields; a bug fails it with the traceback kept for engineers. The
active mapping versions, their rules and the compiled schema validators are read once per batch, so a newly
activated version runs from the next batch on; so are the outbound connectors and the governed tables the
workflows consult (healthsync.unitofwork.snapshot: reimbursement rates, stocked charge codes, code tables). A worker finishes only messages it still holds: a claim
released as stale (`release_stale_claims`) and taken by another worker is left to that worker.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jsonschema
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Prefetch
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from healthsync.choices import ExceptionKind, ExceptionStatus, Lane, MessageStatus, VersionStatus
from healthsync.deliveries import connectors_snapshot
from healthsync.errors import MappingError, SchemaInvalid
from healthsync.inserts import defer_in_chunks, insert_if_new, insert_many_if_new, send_created
from healthsync.mapping import apply_rules, parse_hl7_datetime
from healthsync.models import (
    CanonicalEvent,
    Connector,
    Delivery,
    ExceptionItem,
    MappingRule,
    MappingSet,
    MappingVersion,
    Message,
    SchemaVersion,
)
from healthsync.registry import connector_registry, workflow_registry
from healthsync.schemacheck import Check, compile_check
from healthsync.unitofwork import batch_snapshot, unit_of_work

# A delivery a workflow asks for while routing a new event is new (its key derives from that event): a chunk
# writes its deliveries together at its end (a repeat after all makes the chunk redo message by message).
defer_in_chunks(Delivery)

logger = logging.getLogger(__name__)

# Claim order: clinical events first, then financial, then batch and replay work.
LANE_PRIORITY: tuple[str, ...] = (Lane.CLINICAL, Lane.FINANCIAL, Lane.BATCH)
# Message type prefixes that are patient care rather than money; the rest of a clinical feed is financial.
CLINICAL_TYPES = ("ADT", "ORM", "ORU", "SIU", "MDM", "VXU", "RDE", "OMG")
# How many untriaged messages one claim reads ahead: triage outpaces processing, so a new admission behind a
# large backlog is keyed, and so claimable, after a few claims.
TRIAGE_AHEAD = 2000
# Messages per transaction while processing a batch: one commit is shared, and a crash loses at most this much
# work (which is redone after the stale claim is released).
CHUNK_SIZE = 50
_CLAIM_LOCK = 0x4853_4331  # "HSC1": the advisory lock claimers take turns on
_FAILED_STATUSES = (MessageStatus.FAILED,)


class _BadData(Exception):
    """A message that cannot become an event because of its content; carries the exception item's fields."""

    def __init__(self, kind: str, reason: str, detail: dict[str, Any]) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.detail = detail


# Keys and lanes --------------------------------------------------------------------------------------------


def business_key_for(parsed: Any) -> str:
    """The key a message's events are ordered by: the encounter (PV1-19), else the patient; '' when neither.

    Pure and cheap (a parsed HL7 message from connectors.hl7v2.reader, or anything with `.get(path)`), so the
    listener can compute it at ingest; the worker computes it at claim time for messages stored without it.
    """
    try:
        visit = parsed.get("PV1-19.1").strip()
        if visit:
            return visit[:200]
        patient = parsed.get("PID-3.1").strip()
    except (AttributeError, ValueError):
        return ""
    return f"patient:{patient}"[:200] if patient else ""


def lane_for(message_type: str, *, connector_lane: str = Lane.CLINICAL, is_replay: bool = False) -> str:
    """The lane a message travels in: replays and batch feeds in batch, clinical feeds split by message type."""
    if is_replay or connector_lane == Lane.BATCH:
        return Lane.BATCH
    if connector_lane == Lane.FINANCIAL:
        return Lane.FINANCIAL
    code = message_type.split("^", 1)[0].upper()
    if not code or code in CLINICAL_TYPES:
        return Lane.CLINICAL
    return Lane.FINANCIAL


def triage(
    raw: bytes, *, message_type: str = "", connector_lane: str = Lane.CLINICAL, is_replay: bool = False
) -> tuple[str, str]:
    """(sequence key, lane) for a stored message's bytes; unreadable bytes get no key (nothing to order by)."""
    from connectors.hl7v2.reader import parse

    key = ""
    if raw[:3] == b"MSH" or raw[:4] == b"\x0bMSH":
        try:
            parsed = parse(raw)
            key = business_key_for(parsed)
            message_type = message_type or parsed.header.message_type
        except Exception:  # bad data fails later, with its reason, in processing; ordering needs no key
            key = ""
    return key, lane_for(message_type, connector_lane=connector_lane, is_replay=is_replay)


def worker_name() -> str:
    """An identity for the claims this process makes: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# Claiming --------------------------------------------------------------------------------------------------


def process_pending(limit: int | None = None, *, lanes: Sequence[str] | None = None) -> int:
    """Process received messages batch by batch, in claim order; returns how many messages were handled."""
    handled = 0
    batch_size = settings.HEALTHSYNC_BATCH_SIZE
    worker = worker_name()
    release_stale_claims()
    while limit is None or handled < limit:
        size = batch_size if limit is None else min(batch_size, limit - handled)
        ids = claim_batch(size, lanes=lanes, worker=worker)
        if not ids:
            break
        handled += process_batch(ids, worker=worker)
    return handled


def claim_batch(size: int, *, lanes: Sequence[str] | None = None, worker: str = "") -> list[int]:
    """Atomically move up to `size` received messages to processing, honouring lanes and per-key order.

    Returns the claimed ids in id order (the order to process them in). Only `worker` then owns them.
    """
    wanted = [lane for lane in LANE_PRIORITY if lanes is None or lane in lanes]
    postgres = connection.vendor == "postgresql"
    with transaction.atomic():
        if postgres:
            # Claimers take turns: each sees the previous claim committed, so per-key checks cannot race.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CLAIM_LOCK])
        _triage_pending(TRIAGE_AHEAD)
        candidates: list[tuple[int, str]] = []
        for lane in wanted:
            query = Message.objects.filter(
                status=MessageStatus.RECEIVED, lane=lane, sequence_key__isnull=False
            ).order_by("id")
            if postgres:
                query = query.select_for_update(skip_locked=True)
            candidates += list(query.values_list("id", "sequence_key")[: size * 2])
        if not candidates:
            return []
        chosen = _choose(candidates, size)
        if not chosen:
            return []
        Message.objects.filter(id__in=chosen, status=MessageStatus.RECEIVED).update(
            status=MessageStatus.PROCESSING, claimed_at=timezone.now(), claimed_by=worker[:80]
        )
    return sorted(chosen)


def _choose(candidates: list[tuple[int, str]], size: int) -> list[int]:
    """Pick claimable candidates in priority order, pulling in the earlier waiting messages of their key."""
    keys = {key for _, key in candidates if key}
    unfinished: dict[str, list[tuple[int, str]]] = defaultdict(list)
    if keys:
        for message_id, key, status in _unfinished_of(sorted(keys)):
            unfinished[key].append((message_id, status))
    chosen: set[int] = set()
    blocked: set[str] = set()
    for message_id, key in candidates:
        if len(chosen) >= size:
            break
        if message_id in chosen:
            continue
        if not key:
            chosen.add(message_id)
            continue
        if key in blocked:
            continue
        earlier = [(i, s) for i, s in unfinished[key] if i < message_id and i not in chosen]
        if (
            any(status != MessageStatus.RECEIVED for _, status in earlier)
            or len(chosen) + len(earlier) + 1 > size
        ):
            # Another worker holds an earlier message of this key (or the batch is full): all later ones wait.
            blocked.add(key)
            continue
        chosen.update(i for i, _ in earlier)
        chosen.add(message_id)
    return list(chosen)


def _unfinished_of(keys: list[str]) -> Iterable[tuple[int, str, str]]:
    """(id, key, status) of the messages of `keys` still waiting or being processed, in id order."""
    waiting = [MessageStatus.RECEIVED, MessageStatus.PROCESSING]
    if connection.vendor != "postgresql":
        return (
            Message.objects.filter(sequence_key__in=keys, status__in=waiting)
            .order_by("id")
            .values_list("id", "sequence_key", "status")
        )
    # The keys as one array joined in: an IN list of a few hundred constants costs more to plan (an estimate
    # per constant) than to run.
    sql = (
        f"SELECT id, sequence_key, status FROM {connection.ops.quote_name(Message._meta.db_table)} "  # noqa: S608
        "WHERE sequence_key IN (SELECT unnest(%s::text[])) AND status = ANY(%s::text[]) ORDER BY id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [keys, waiting])
        return cursor.fetchall()


def _triage_pending(limit: int) -> int:
    """Give the oldest untriaged received messages their sequence key and lane; returns how many."""
    rows = list(
        Message.objects.filter(status=MessageStatus.RECEIVED, sequence_key__isnull=True)
        .order_by("id")
        .values_list("id", "raw", "message_type", "lane", "replay_of_id")[:limit]
    )
    if not rows:
        return 0
    updates = []
    for message_id, raw, message_type, lane, replay_of in rows:
        key, new_lane = triage(
            bytes(raw), message_type=message_type, connector_lane=lane, is_replay=replay_of is not None
        )
        updates.append((message_id, key, new_lane))
    _bulk_set(["sequence_key", "lane"], updates)
    return len(updates)


def _bulk_set(fields: list[str], rows: list[tuple[Any, ...]]) -> None:
    """Set text columns of many messages in one statement: rows are (id, value, value, ...)."""
    if not rows:
        return
    if connection.vendor == "postgresql":
        quote = connection.ops.quote_name
        columns = ", ".join(f"{quote(name)} = v.c{n}" for n, name in enumerate(fields))
        arrays = ", ".join("%s::text[]" for _ in fields)
        names = ", ".join(f"c{n}" for n in range(len(fields)))
        # Identifiers come from the model; every value is a parameter.
        sql = (
            f"UPDATE {quote(Message._meta.db_table)} AS m SET {columns} "  # noqa: S608
            f"FROM unnest(%s::bigint[], {arrays}) AS v(id, {names}) WHERE m.id = v.id AND m.id = ANY(%s::bigint[])"
        )
        ids = [row[0] for row in rows]
        params = [ids, *([row[n + 1] for row in rows] for n in range(len(fields))), ids]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
        return
    objs = []
    for row in rows:
        obj = Message(id=row[0])
        for name, value in zip(fields, row[1:], strict=True):
            setattr(obj, name, value)
        objs.append(obj)
    Message.objects.bulk_update(objs, fields, batch_size=200)


def release_stale_claims() -> int:
    """Put back messages a dead worker claimed but never finished; returns how many.

    Safe because a message's work commits in one transaction with its status, and a worker only finishes
    messages it still holds (a live but slow worker whose claim was released leaves them to the next one).
    """
    timeout = getattr(settings, "HEALTHSYNC_CLAIM_TIMEOUT", 900)
    cutoff = timezone.now() - timedelta(seconds=timeout)
    released = Message.objects.filter(status=MessageStatus.PROCESSING, claimed_at__lt=cutoff).update(
        status=MessageStatus.RECEIVED, claimed_by=""
    )
    if released:
        logger.warning("released %s messages claimed by a worker that did not finish them", released)
    return released


# Processing ------------------------------------------------------------------------------------------------


@dataclass
class _Route:
    """One active mapping set with its version's rules, as read at the start of a batch."""

    mapping_set: MappingSet
    version: MappingVersion
    rules: list[MappingRule]


@dataclass
class _Config:
    """The governed configuration a batch runs with: read once, so one batch sees one consistent version."""

    routes: dict[tuple[str, str], list[_Route]] = field(default_factory=dict)
    schemas: dict[str, SchemaVersion] = field(default_factory=dict)
    # The connectors (with their systems) of the batch's messages, read once rather than joined to every row.
    connectors: dict[int, Connector] = field(default_factory=dict)

    def attach_connectors(self, messages: list[Message]) -> None:
        """Give each message its connector object, reading the ones not seen in this batch yet."""
        missing = {m.connector_id for m in messages} - self.connectors.keys()
        if missing:
            self.connectors.update(Connector.objects.select_related("system").in_bulk(missing))
        for message in messages:
            message.connector = self.connectors[message.connector_id]

    @classmethod
    def load(cls) -> _Config:
        config = cls()
        rules = Prefetch("active_version__rules", queryset=MappingRule.objects.order_by("position", "id"))
        sets = (
            MappingSet.objects.filter(
                active_version__isnull=False, active_version__status=VersionStatus.ACTIVE
            )
            .select_related("active_version")
            .prefetch_related(rules)
            .order_by("code")
        )
        for mapping_set in sets:
            version = mapping_set.active_version
            assert version is not None
            route = _Route(mapping_set, version, list(version.rules.all()))
            config.routes.setdefault((mapping_set.protocol, mapping_set.message_type), []).append(route)
        for schema in SchemaVersion.objects.filter(status=VersionStatus.ACTIVE):
            config.schemas[schema.event_type] = schema
        return config


_VALIDATORS: dict[tuple[int, str], tuple[Any, Check | None]] = {}


def _validator(schema: SchemaVersion) -> Any:
    """A compiled validator per schema version and content (compiling costs more than validating)."""
    return _validation(schema)[0]


def _validation(schema: SchemaVersion) -> tuple[Any, Check | None]:
    """The schema's jsonschema validator and its fast yes/no check (healthsync.schemacheck; None if none)."""
    # The schema object lives for one batch (_Config): serialising its content once per batch, not once per
    # message, keeps the cache key honest (an edited draft gets a new validator) at no cost per message.
    remembered = getattr(schema, "_hs_validator", None)
    if remembered is not None and remembered[0] is schema.json_schema:
        return remembered[1]
    cache_key = (schema.pk or 0, json.dumps(schema.json_schema, sort_keys=True))
    compiled = _VALIDATORS.get(cache_key)
    if compiled is None:
        validator_class = jsonschema.validators.validator_for(
            schema.json_schema, default=jsonschema.Draft202012Validator
        )
        validator = validator_class(schema.json_schema, format_checker=validator_class.FORMAT_CHECKER)
        compiled = (validator, compile_check(validator))
        if len(_VALIDATORS) > 256:
            _VALIDATORS.clear()
        _VALIDATORS[cache_key] = compiled
    schema._hs_validator = (schema.json_schema, compiled)  # type: ignore[attr-defined]
    return compiled


def process_batch(ids: Sequence[int], *, worker: str | None = None) -> int:
    """Process claimed messages in id order, a chunk per transaction; returns how many were handled.

    With `worker`, only messages that worker still holds are processed (a stale claim taken over by another
    worker is skipped). Never raises for bad data or a bug in one message.
    """
    ordered = sorted(ids)
    if not ordered:
        return 0
    config = _Config.load()
    handled = 0
    with connectors_snapshot(), batch_snapshot():
        for start in range(0, len(ordered), CHUNK_SIZE):
            handled += _process_chunk(ordered[start : start + CHUNK_SIZE], config, worker)
    return handled


def process_message(message_id: int) -> str:
    """Process one message (whoever claimed it) and return its new status. Never raises for bad data or a bug."""
    with batch_snapshot():
        _process_chunk([message_id], _Config.load(), None)
    return Message.objects.filter(pk=message_id).values_list("status", flat=True).first() or ""


class _RetryCarefully(Exception):
    """A chunk's fast pass hit an error after writing: roll it back and redo it a savepoint per message."""


def _process_chunk(ids: list[int], config: _Config, worker: str | None) -> int:
    # The fast pass needs no savepoint per message (two round trips each): bad data is found before anything
    # is written, and events are inserted with ON CONFLICT. Anything else that goes wrong (a bug, a database
    # error in a workflow handler) rolls the whole chunk back, and the careful pass isolates the message.
    try:
        return _run_chunk(ids, config, worker, careful=False)
    except _RetryCarefully as retry:
        logger.info("chunk of %s messages redone message by message: %r", len(ids), retry.__cause__)
        return _run_chunk(ids, config, worker, careful=True)


def _run_chunk(ids: list[int], config: _Config, worker: str | None, *, careful: bool) -> int:
    with transaction.atomic():
        query = Message.objects.filter(id__in=ids).order_by("id")
        if connection.vendor == "postgresql":
            query = query.select_for_update()
        messages = list(query)
        config.attach_connectors(messages)
        if worker is not None:
            messages = [
                m for m in messages if m.status == MessageStatus.PROCESSING and m.claimed_by == worker[:80]
            ]
        if careful:
            done = [message for message in messages if _process_one(message, config) is not None]
        else:
            done = _run_fast(messages, config)
        if done:
            now = timezone.now()
            for message in done:
                message.error = ""
                message.attempts += 1
                message.processed_at = now
            _finish(done)
    for message in messages:
        logger.info("message %s %s", message.pk, message.status)
    return len(messages)


def _run_fast(messages: list[Message], config: _Config) -> list[Message]:
    """The fast pass over a chunk: map every message, insert all their events at once, then route them in order.

    Raises _RetryCarefully when the chunk must be redone a savepoint per message. The workflows work in a unit
    of work (healthsync.unitofwork): they read the runs of the chunk's events together and write run updates,
    steps and dirty marks once at the end, all in the chunk's transaction.
    """
    prepared: list[tuple[Message, str, list[_Ready]]] = []
    done: list[Message] = []
    for message in messages:
        prepared_message = _prepare_fast(message, config)
        if prepared_message is not None:
            prepared.append((message, *prepared_message))
    try:
        with unit_of_work() as unit:
            # One statement decides every repeat (a retry, a replay, a second copy): the unique key, not a look-up.
            items = [item for _, _, ready in prepared for item in ready]
            inserted = insert_many_if_new(
                [item.event for item in items], key=["idempotency_key"], signal=False
            )
            new = {id(item) for item, ok in zip(items, inserted, strict=True) if ok}
            unit.events = [item.event for item in items if id(item) in new]
            for message, status, ready in prepared:
                _route(message, [item for item in ready if id(item) in new])
                message.status = status
                if status == MessageStatus.PROCESSED and message.attempts:
                    _resolve_message_exceptions(message)
                done.append(message)
            unit.flush()
    except Exception as exc:
        raise _RetryCarefully from exc
    return done


_FINISH_FIELDS = ["status", "error", "attempts", "processed_at", "business_key", "message_type"]


def _finish(done: list[Message]) -> None:
    """Store the outcome of a chunk's messages in one statement."""
    if connection.vendor != "postgresql":
        Message.objects.bulk_update(done, _FINISH_FIELDS)
        return
    # One UPDATE from arrays: bulk_update's CASE per column costs far more to plan on a 50-row chunk.
    quote = connection.ops.quote_name
    sql = (
        f"UPDATE {quote(Message._meta.db_table)} AS m SET "  # noqa: S608 (identifiers from the model)
        "status = v.status, error = v.error, attempts = v.attempts, processed_at = v.processed_at, "
        "business_key = v.business_key, message_type = v.message_type "
        "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::int[], %s::timestamptz[], %s::text[], "
        "%s::text[]) AS v(id, status, error, attempts, processed_at, business_key, message_type) "
        # The join alone may be planned as a scan of every partition (a hash join); the ids and the partition
        # key as constant lists make it index look-ups in the partitions that hold the chunk.
        "WHERE m.id = v.id AND m.id = ANY(%s::bigint[]) AND m.received_at = ANY(%s::timestamptz[])"
    )
    ids = [m.pk for m in done]
    params = [
        ids,
        *([getattr(m, name) for m in done] for name in _FINISH_FIELDS),
        ids,
        sorted({m.received_at for m in done}),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _prepare_fast(message: Message, config: _Config) -> tuple[str, list[_Ready]] | None:
    """Parse, map and validate one message of the fast pass; None when it failed for its data (recorded)."""
    original = (message.business_key, message.message_type)
    try:
        return _prepare(message, config)
    except _BadData as bad:
        # Nothing was written for this message: its failure can be recorded in the chunk's transaction.
        message.business_key, message.message_type = original
        try:
            _record_failure(message, bad.kind, bad.reason, bad.detail, error=bad.reason)
        except Exception as exc:
            raise _RetryCarefully from exc
        logger.info("message %s failed: %s", message.pk, bad.kind)
        return None
    except Exception as exc:  # a bug: the careful pass records it with its traceback
        raise _RetryCarefully from exc


def _process_one(message: Message, config: _Config) -> str | None:
    """Process one message in its own savepoint; None when it failed (its failure is already recorded)."""
    original = (message.business_key, message.message_type)
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                status, events = _prepare(message, config)
                _store(message, events)
                message.status = status
                if status == MessageStatus.PROCESSED and message.attempts:
                    # A message that now goes through closes the exception its earlier failure opened.
                    _resolve_message_exceptions(message)
            return status
        except _BadData as bad:
            message.business_key, message.message_type = original
            _fail(message, bad.kind, bad.reason, bad.detail, error=bad.reason)
            logger.info("message %s failed: %s", message.pk, bad.kind)
            return None
        except IntegrityError:
            # A workflow handler met a row another worker wrote meanwhile: once more, it now finds it stored.
            message.business_key, message.message_type = original
            if attempt == 1:
                continue
            return _fail_internal(message)
        except Exception:
            message.business_key, message.message_type = original
            return _fail_internal(message)
    return None


def _fail_internal(message: Message) -> None:
    # A bug, not bad data: keep the traceback for engineers and carry on with the batch.
    trace = traceback.format_exc()
    logger.exception("message %s errored", message.pk)
    _fail(
        message,
        ExceptionKind.MAPPING_FAILED,
        f"Message #{message.pk} could not be processed because of an internal error; "
        "the integration team has the technical detail.",
        {"error": "internal", "traceback": trace},
        error=trace,
    )
    return None


@dataclass
class _Ready:
    """An event mapped and validated, not yet stored; `native` events name the message by their own subject."""

    event: CanonicalEvent
    native: bool = False


def _prepare(message: Message, config: _Config) -> tuple[str, list[_Ready]]:
    """Parse, map and validate: the message's new status and its events, nothing written yet.

    Raises _BadData for content that cannot become events; every check happens here, before any write, so a
    failing message leaves nothing behind.
    """
    adapter = connector_registry.get(message.connector.protocol)
    try:
        parsed = adapter.parse(bytes(message.raw))
    except Exception as exc:
        reason = getattr(exc, "message", None) or str(exc)
        raise _BadData(
            ExceptionKind.MAPPING_FAILED,
            f"Message #{message.pk} could not be read: {reason}.",
            {"stage": "parse", "error": reason, "code": getattr(exc, "code", "")},
        ) from exc
    header = getattr(parsed, "header", None)
    message_type = message.message_type or getattr(header, "message_type", "")
    message.message_type = message_type
    control_id = message.control_id or getattr(header, "control_id", "") or str(message.pk)
    routes = config.routes.get((message.connector.protocol, message_type), [])
    if not message.business_key and message.sequence_key and not message.sequence_key.startswith("patient:"):
        message.business_key = message.sequence_key
    if not routes:
        # Standard transactions whose meaning the standard fixes (X12 999/277CA/835) carry many events per
        # message; their adapter reads them out, and each is validated against its active schema as usual.
        native = getattr(adapter, "events", None)
        if native is None:
            return MessageStatus.IGNORED, []
        try:
            specs = native(bytes(message.raw))
        except Exception as exc:
            reason = getattr(exc, "message", None) or str(exc)
            raise _BadData(
                ExceptionKind.MAPPING_FAILED,
                f"{message_type or 'Message'} #{message.pk} carries no events HealthSync can read: {reason}.",
                {"stage": "events", "error": reason},
            ) from exc
        ready = [_Ready(_native_event(message, spec, config), native=True) for spec in specs]
        return (MessageStatus.PROCESSED if specs else MessageStatus.IGNORED), ready
    ready = [_Ready(_mapped_event(message, parsed, route, control_id, config)) for route in routes]
    # The message is findable by the business key of its (last) event, even when that event was emitted before.
    message.business_key = ready[-1].event.subject
    return MessageStatus.PROCESSED, ready


def _store(message: Message, ready: list[_Ready]) -> None:
    """Insert each event not emitted before and route it to its workflows; a repeat is skipped."""
    for item in ready:
        # One round trip decides a repeat (a retry, a replay or a second copy): the unique key, not a look-up.
        if insert_if_new(item.event):
            _route(message, [item], signal=False)


def _route(message: Message, new: list[_Ready], *, signal: bool = True) -> None:
    """Hand each newly stored event to its workflows (post_save first, as a save would have sent it)."""
    for item in new:
        event = item.event
        if signal:
            send_created(event)
        if item.native and not message.business_key:
            message.business_key = event.subject
        for handler in workflow_registry.handlers_for(event.type):
            handler(event)


def _mapped_event(
    message: Message, parsed: Any, route: _Route, control_id: str, config: _Config
) -> CanonicalEvent:
    """Map and validate one event of a message (unsaved)."""
    mapping_set, version = route.mapping_set, route.version
    event_type = mapping_set.event_type
    label = f"{message.message_type or 'Message'} #{message.pk}"
    try:
        result = apply_rules(route.rules, parsed)
    except MappingError as exc:
        fields = ", ".join(exc.missing) if exc.missing else ""
        raise _BadData(
            ExceptionKind.MAPPING_FAILED,
            f"{label} cannot become {event_type}: {exc.message}.",
            {
                "stage": "mapping",
                "mapping_set": mapping_set.code,
                "missing": exc.missing,
                "fields": fields,
                "error": exc.message,
            },
        ) from exc
    data = result.event_data()
    schema = config.schemas.get(event_type)
    if schema is None:
        raise _BadData(
            ExceptionKind.SCHEMA_INVALID,
            f"{label} cannot become {event_type}: no active schema version exists for that event type.",
            {"stage": "schema", "event_type": event_type},
        )
    try:
        validate_event_data(schema, data)
    except SchemaInvalid as exc:
        raise _BadData(
            ExceptionKind.SCHEMA_INVALID,
            f"{label} produced {event_type} data that does not match schema {schema.version}: "
            + "; ".join(exc.errors)
            + ".",
            {
                "stage": "schema",
                "event_type": event_type,
                "schema_version": schema.version,
                "errors": exc.errors,
            },
        ) from exc

    system = message.connector.system
    envelope = result.envelope
    correlation = {
        "patient": _dig(data, "patient.mrn"),
        "encounter": data.get("encounter_id", ""),
        "account": data.get("account_number", ""),
        **(envelope.get("correlation") or {}),
    }
    return CanonicalEvent(
        type=event_type,
        source=system.code,
        subject=str(envelope.get("subject") or data.get("encounter_id") or control_id),
        occurred_at=_occurred_at(envelope.get("occurred_at"), parsed),
        facility=str(envelope.get("facility") or data.get("facility") or "")[:80],
        idempotency_key=f"{system.code}:{event_type}:{control_id}",
        source_ref=control_id,
        correlation={key: value for key, value in correlation.items() if value},
        data=data,
        message=message,
        mapping_version=version,
        schema_version=schema,
    )


def _native_event(message: Message, spec: dict[str, Any], config: _Config) -> CanonicalEvent:
    """Validate one event an adapter read out of a standard transaction (unsaved)."""
    event_type = str(spec["type"])
    data = dict(spec.get("data") or {})
    schema = config.schemas.get(event_type)
    label = f"{message.message_type or 'Message'} #{message.pk}"
    if schema is None:
        raise _BadData(
            ExceptionKind.SCHEMA_INVALID,
            f"{label} carries {event_type}, but no active schema version exists for that event type.",
            {"stage": "schema", "event_type": event_type},
        )
    try:
        validate_event_data(schema, data)
    except SchemaInvalid as exc:
        raise _BadData(
            ExceptionKind.SCHEMA_INVALID,
            f"{label} carries {event_type} data that does not match schema {schema.version}: "
            + "; ".join(exc.errors)
            + ".",
            {"stage": "schema", "event_type": event_type, "errors": exc.errors},
        ) from exc
    return CanonicalEvent(
        type=event_type,
        source=message.connector.system.code,
        subject=str(spec.get("subject") or "")[:200],
        occurred_at=_occurred_at(spec.get("occurred_at"), None),
        idempotency_key=str(spec["idempotency_key"]),
        source_ref=str(spec.get("source_ref") or message.control_id)[:200],
        correlation={key: value for key, value in (spec.get("correlation") or {}).items() if value},
        data=data,
        message=message,
        schema_version=schema,
    )


def validate_event_data(schema: SchemaVersion, data: dict[str, Any]) -> None:
    """Raise SchemaInvalid listing each failing field by path, without echoing the (PHI) values."""
    validator, fast = _validation(schema)
    # The fast check answers as jsonschema does; only data it rejects is walked by jsonschema for the errors.
    if fast is not None and fast(data):
        return
    errors = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(part) for part in error.absolute_path) or "(event)"
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in (error.instance or {})]
            prefix = "" if path == "(event)" else f"{path}."
            errors.extend(f"{prefix}{name} is required" for name in missing)
        elif error.validator == "type":
            errors.append(f"{path} must be of type {error.validator_value}")
        elif error.validator in ("enum", "const"):
            errors.append(f"{path} is not one of the allowed values")
        elif error.validator == "format":
            errors.append(f"{path} is not a valid {error.validator_value}")
        else:
            errors.append(f"{path} fails the {error.validator} rule")
    if errors:
        raise SchemaInvalid(f"Data does not match schema {schema.version}", errors=errors)


def _dig(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return ""
        node = node.get(key, "")
    return node


def _occurred_at(value: Any, parsed: Any) -> Any:
    if value:
        moment = parse_datetime(str(value))
        if moment is not None:
            # Sources that send local times without an offset (X12 dates) mean the site's time zone.
            return timezone.make_aware(moment) if timezone.is_naive(moment) else moment
    try:
        header_time = parsed.get("MSH-7.1")
    except Exception:  # a parsed message of another protocol has no MSH
        header_time = ""
    return parse_hl7_datetime(header_time) if header_time else timezone.now()


def _fail(message: Message, kind: str, reason: str, detail: dict[str, Any], *, error: str) -> None:
    """Record a failure in the chunk's transaction, in a savepoint so a fault here spares the other messages."""
    try:
        with transaction.atomic():
            _record_failure(message, kind, reason, detail, error=error)
    except Exception:
        # Left in processing: the stale-claim release brings it back rather than losing it.
        logger.exception("message %s: could not record its failure", message.pk)


def _record_failure(message: Message, kind: str, reason: str, detail: dict[str, Any], *, error: str) -> None:
    message.status = MessageStatus.FAILED
    message.error = error
    message.attempts += 1
    message.processed_at = timezone.now()
    message.save(update_fields=["status", "error", "attempts", "processed_at", "message_type"])
    # One open exception per failing message: a retry that fails again refreshes it.
    existing = ExceptionItem.objects.open().filter(message=message).first()
    if existing is not None:
        existing.kind = kind
        existing.reason = reason
        existing.detail = detail
        existing.save(update_fields=["kind", "reason", "detail", "updated_at"])
        return
    ExceptionItem.objects.create(
        kind=kind,
        reason=reason,
        detail=detail,
        business_key=message.business_key or message.sequence_key or message.control_id,
        message=message,
    )


def _resolve_message_exceptions(message: Message) -> None:
    items = ExceptionItem.objects.open().filter(
        message=message,
        delivery__isnull=True,
        kind__in=[ExceptionKind.MAPPING_FAILED, ExceptionKind.SCHEMA_INVALID],
    )
    for item in items:  # saved one by one so that the audit log records each resolution
        item.status = ExceptionStatus.RESOLVED
        item.resolved_at = timezone.now()
        item.resolution_note = "The message was processed successfully on a later attempt."
        item.save(update_fields=["status", "resolved_at", "resolution_note", "updated_at"])


def requeue_message(message: Message) -> None:
    """Put a failed message back in the queue (after a mapping or schema fix); the worker picks it up."""
    Message.objects.filter(pk=message.pk).update(status=MessageStatus.RECEIVED, error="", claimed_by="")
    transaction.on_commit(lambda: _enqueue_processing())


def _enqueue_processing() -> None:
    from django_q.tasks import async_task

    async_task("healthsync.tasks.process_pending", task_name="process_pending", group="pipeline")


def pending_ids(ids: Iterable[int]) -> list[int]:
    """Of `ids`, those still waiting or being processed (tests and tools wait on these)."""
    return list(
        Message.objects.filter(
            id__in=list(ids), status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING]
        ).values_list("id", flat=True)
    )


def wait_until_idle(timeout: float = 30.0, poll: float = 0.2) -> bool:
    """True once no message is received or processing (benchmarks and fault tests wait on this)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Message.objects.filter(status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING]).exists():
            return True
        time.sleep(poll)
    return False
