"""The sync runtime's inbound half: claim received messages, parse, map, validate, emit canonical events, route.

Each message is handled in its own transaction: its event, the workflow changes the event causes and its new
status commit together or not at all, and one bad message never rolls back another. Bad data (unparseable
bytes, missing required fields, a schema violation) fails the message with an exception item saying which
fields; a bug fails it with the traceback kept for engineers. The batch always carries on.
"""

from __future__ import annotations

import logging
import traceback
from datetime import timedelta
from typing import Any

import jsonschema
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from healthsync.choices import ExceptionKind, ExceptionStatus, MessageStatus, VersionStatus
from healthsync.errors import MappingError, SchemaInvalid
from healthsync.mapping import apply_mapping, parse_hl7_datetime
from healthsync.models import (
    CanonicalEvent,
    ExceptionItem,
    MappingSet,
    Message,
    SchemaVersion,
)
from healthsync.registry import connector_registry, workflow_registry

logger = logging.getLogger(__name__)


class _BadData(Exception):
    """A message that cannot become an event because of its content; carries the exception item's fields."""

    def __init__(self, kind: str, reason: str, detail: dict[str, Any]) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.detail = detail


def process_pending(limit: int | None = None) -> int:
    """Process received messages in id order, batch by batch; returns how many messages were handled."""
    handled = 0
    batch_size = settings.HEALTHSYNC_BATCH_SIZE
    release_stale_claims()
    while limit is None or handled < limit:
        size = batch_size if limit is None else min(batch_size, limit - handled)
        ids = claim_batch(size)
        if not ids:
            break
        for message_id in ids:
            process_message(message_id)
            handled += 1
    return handled


def claim_batch(size: int) -> list[int]:
    """Atomically move up to `size` received messages to processing; only this worker then owns them."""
    now = timezone.now()
    if connection.vendor == "postgresql":
        with transaction.atomic():
            ids = list(
                Message.objects.filter(status=MessageStatus.RECEIVED)
                .order_by("id")
                .select_for_update(skip_locked=True)
                .values_list("id", flat=True)[:size]
            )
            Message.objects.filter(id__in=ids).update(status=MessageStatus.PROCESSING, claimed_at=now)
        return ids
    # SQLite has no row locks: a conditional UPDATE that must change exactly one row is the claim.
    claimed: list[int] = []
    candidates = Message.objects.filter(status=MessageStatus.RECEIVED).order_by("id")
    for message_id in candidates.values_list("id", flat=True)[: size * 2]:
        won = Message.objects.filter(id=message_id, status=MessageStatus.RECEIVED).update(
            status=MessageStatus.PROCESSING, claimed_at=now
        )
        if won == 1:
            claimed.append(message_id)
            if len(claimed) >= size:
                break
    return claimed


def release_stale_claims() -> int:
    """Put back messages a dead worker claimed but never finished; returns how many.

    Safe because a message's work commits in one transaction with its status, and its event is keyed.
    """
    timeout = getattr(settings, "HEALTHSYNC_CLAIM_TIMEOUT", 900)
    cutoff = timezone.now() - timedelta(seconds=timeout)
    released = Message.objects.filter(status=MessageStatus.PROCESSING, claimed_at__lt=cutoff).update(
        status=MessageStatus.RECEIVED
    )
    if released:
        logger.warning("released %s messages claimed by a worker that did not finish them", released)
    return released


def process_message(message_id: int) -> str:
    """Process one claimed message and return its new status. Never raises for bad data or a bug."""
    try:
        with transaction.atomic():
            message = Message.objects.select_related("connector__system").get(pk=message_id)
            status = _process(message)
            message.status = status
            message.error = ""
            message.attempts += 1
            message.processed_at = timezone.now()
            message.save(
                update_fields=["status", "error", "attempts", "processed_at", "business_key", "message_type"]
            )
            if status == MessageStatus.PROCESSED:
                # A message that now goes through closes the exception its earlier failure opened.
                _resolve_message_exceptions(message)
        logger.info("message %s %s", message_id, status)
        return status
    except _BadData as bad:
        _fail(message_id, bad.kind, bad.reason, bad.detail, error=bad.reason)
        logger.info("message %s failed: %s", message_id, bad.kind)
        return MessageStatus.FAILED
    except Exception:
        # A bug, not bad data: keep the traceback for engineers and carry on with the batch.
        trace = traceback.format_exc()
        logger.exception("message %s errored", message_id)
        _fail(
            message_id,
            ExceptionKind.MAPPING_FAILED,
            f"Message #{message_id} could not be processed because of an internal error; "
            "the integration team has the technical detail.",
            {"error": "internal", "traceback": trace},
            error=trace,
        )
        return MessageStatus.FAILED


def _process(message: Message) -> str:
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
    mapping_sets = list(
        MappingSet.objects.filter(
            protocol=message.connector.protocol,
            message_type=message_type,
            active_version__isnull=False,
            active_version__status=VersionStatus.ACTIVE,
        )
        .select_related("active_version")
        .order_by("code")
    )
    if not mapping_sets:
        return MessageStatus.IGNORED
    for mapping_set in mapping_sets:
        event = _emit(message, parsed, mapping_set, control_id)
        if event is not None:
            message.business_key = event.subject
    return MessageStatus.PROCESSED


def _emit(message: Message, parsed: Any, mapping_set: MappingSet, control_id: str) -> CanonicalEvent | None:
    """Map, validate and store one event, then route it; None when this event was already emitted."""
    version = mapping_set.active_version
    assert version is not None
    event_type = mapping_set.event_type
    label = f"{message.message_type or 'Message'} #{message.pk}"
    try:
        result = apply_mapping(version, parsed)
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
    schema = SchemaVersion.objects.filter(event_type=event_type, status=VersionStatus.ACTIVE).first()
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
    subject = str(envelope.get("subject") or data.get("encounter_id") or control_id)
    idempotency_key = f"{system.code}:{event_type}:{control_id}"
    if CanonicalEvent.objects.filter(idempotency_key=idempotency_key).exists():
        # Already emitted (a replay or a second copy): keep the message findable by its business key.
        message.business_key = subject
        return None
    try:
        with transaction.atomic():
            event = CanonicalEvent.objects.create(
                type=event_type,
                source=system.code,
                subject=subject,
                occurred_at=_occurred_at(envelope.get("occurred_at"), parsed),
                facility=str(envelope.get("facility") or data.get("facility") or "")[:80],
                idempotency_key=idempotency_key,
                source_ref=control_id,
                correlation={key: value for key, value in correlation.items() if value},
                data=data,
                message=message,
                mapping_version=version,
                schema_version=schema,
            )
    except IntegrityError:
        # Another worker emitted it between the check and the insert: the effect already exists.
        return None
    for handler in workflow_registry.handlers_for(event_type):
        handler(event)
    return event


def validate_event_data(schema: SchemaVersion, data: dict[str, Any]) -> None:
    """Raise SchemaInvalid listing each failing field by path, without echoing the (PHI) values."""
    validator_class = jsonschema.validators.validator_for(
        schema.json_schema, default=jsonschema.Draft202012Validator
    )
    validator = validator_class(schema.json_schema, format_checker=validator_class.FORMAT_CHECKER)
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
            return moment
    try:
        header_time = parsed.get("MSH-7.1")
    except Exception:  # a parsed message of another protocol has no MSH
        header_time = ""
    return parse_hl7_datetime(header_time) if header_time else timezone.now()


def _fail(message_id: int, kind: str, reason: str, detail: dict[str, Any], *, error: str) -> None:
    with transaction.atomic():
        message = Message.objects.select_related("connector").get(pk=message_id)
        message.status = MessageStatus.FAILED
        message.error = error
        message.attempts += 1
        message.processed_at = timezone.now()
        message.save(update_fields=["status", "error", "attempts", "processed_at"])
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
            business_key=message.business_key or message.control_id,
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
    Message.objects.filter(pk=message.pk).update(status=MessageStatus.RECEIVED, error="")
    transaction.on_commit(lambda: _enqueue_processing())


def _enqueue_processing() -> None:
    from django_q.tasks import async_task

    async_task("healthsync.tasks.process_pending", task_name="process_pending", group="pipeline")
