"""Replay: run stored messages through the pipeline again, audited, without a second downstream effect.

A replay never touches the original message. It stores a copy (or, for edit-and-replay, the edited bytes) as a
new message with `replay_of` set, in the batch lane so that clinical traffic never waits behind it, and lets the
worker process it like any other. Mapping runs again; what happens downstream is decided by the idempotency
keys the pipeline and the workflows already use:

- the canonical event is keyed `source system : event type : control id` (pipeline._emit), so a replay of a
  message that already produced its event maps it again but emits nothing new and routes nothing;
- a message that never produced its event (it failed mapping or validation) emits it now, and the workflow's
  own keys (e.g. `source:claim:encounter:1`) keep any claim or journal entry to one;
- deliveries that failed are sent again, to the chosen destinations only; deliveries that succeeded keep their
  stored reply and are not sent again.

Every replay writes a ReplayRequest (who, why, what, to where) and one ReplayItem per message.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from healthsync.choices import DeliveryStatus, Direction, Lane, MessageStatus, ReplayKind
from healthsync.deliveries import delivery_reset
from healthsync.models import Connector, Delivery, ExceptionItem, Message, ReplayItem, ReplayRequest
from healthsync.registry import connector_registry

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

REPLAY_PERMISSION = "healthsync.replay_message"
# Statuses a replay may start from: a message still waiting for or held by a worker is not finished yet.
REPLAYABLE_STATUSES = (
    MessageStatus.PROCESSED,
    MessageStatus.IGNORED,
    MessageStatus.DUPLICATE,
    MessageStatus.FAILED,
    MessageStatus.REJECTED,
)
_CHUNK = 500


def max_replay_size() -> int:
    return int(getattr(settings, "HEALTHSYNC_REPLAY_MAX", 10_000))


def _check(actor: User, reason: str) -> str:
    if not actor.has_perm(REPLAY_PERMISSION):
        raise PermissionDenied("You are not allowed to replay messages.")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("Say why these messages are replayed; the reason is kept in the audit trail.")
    return reason


def _check_destinations(destinations: Sequence[Connector] | None) -> list[Connector]:
    chosen = list(destinations or [])
    wrong = [c.code for c in chosen if c.direction != Direction.OUTBOUND]
    if wrong:
        raise ValidationError(f"These connectors are not destinations: {', '.join(sorted(wrong))}.")
    return chosen


def message_filter(
    *,
    connector: Connector | None = None,
    message_type: str = "",
    status: str = "",
    received_from: datetime | None = None,
    received_to: datetime | None = None,
) -> QuerySet[Message]:
    """The stored messages a filtered replay would take (finished ones only), oldest first."""
    messages = Message.objects.filter(status__in=REPLAYABLE_STATUSES)
    if connector is not None:
        messages = messages.filter(connector=connector)
    if message_type:
        messages = messages.filter(message_type__iexact=message_type.strip())
    if status:
        messages = messages.filter(status=status)
    if received_from is not None:
        messages = messages.filter(received_at__gte=received_from)
    if received_to is not None:
        messages = messages.filter(received_at__lt=received_to)
    return messages.order_by("id")


@transaction.atomic
def message_replay(
    *,
    messages: QuerySet[Message] | Iterable[Message],
    destinations: list[Connector] | None,
    reason: str,
    actor: User,
    kind: str = ReplayKind.MESSAGE,
    criteria: dict[str, Any] | None = None,
    exception: ExceptionItem | None = None,
) -> ReplayRequest:
    """Replay `messages` (to `destinations` only, or to all when None); returns the audit row.

    Messages still waiting for a worker are left out (they will be processed anyway) and counted.
    """
    reason = _check(actor, reason)
    chosen = _check_destinations(destinations)
    if isinstance(messages, QuerySet):
        ids = list(messages.order_by("id").values_list("id", flat=True)[: max_replay_size() + 1])
    else:
        ids = sorted({m.pk for m in messages})
    if not ids:
        raise ValidationError("No messages match: there is nothing to replay.")
    if len(ids) > max_replay_size():
        raise ValidationError(
            f"More than {max_replay_size()} messages match; narrow the filter (connector, type, time range)."
        )
    request = ReplayRequest.objects.create(
        kind=kind,
        reason=reason,
        actor=actor,
        actor_username=actor.get_username(),
        criteria={**(criteria or {}), "message_ids": ids[:50], "matched": len(ids)},
        exception=exception,
    )
    if chosen:
        request.destinations.set(chosen)
    skipped = 0
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        originals = list(Message.objects.filter(pk__in=chunk).order_by("id"))
        finished = [m for m in originals if m.status in REPLAYABLE_STATUSES]
        skipped += len(originals) - len(finished)
        copies = Message.objects.bulk_create([_copy(m, bytes(m.raw)) for m in finished])
        resent = _resend_failed_deliveries(request, [m.pk for m in finished], chosen)
        ReplayItem.objects.bulk_create(
            ReplayItem(
                request=request,
                original=original,
                original_number=original.pk,
                replay=copy,
                deliveries_resent=resent.get(original.pk, 0),
            )
            for original, copy in zip(finished, copies, strict=True)
        )
        request.message_count += len(finished)
    if skipped:
        request.criteria["skipped_in_flight"] = skipped
    request.save()
    if request.message_count:
        transaction.on_commit(_enqueue_processing)
    logger.info(
        "replay %s by user %s: %s messages, %s deliveries resent",
        request.pk,
        actor.pk,
        request.message_count,
        request.deliveries_resent,
    )
    return request


@transaction.atomic
def message_edit_and_replay(*, message: Message, raw: bytes, reason: str, actor: User) -> ReplayRequest:
    """Replay an edited copy of `message`; the original stays exactly as received.

    The edited bytes must parse with the connector's adapter. Idempotency still holds: if the edit keeps the
    control id of a message that already produced its event, mapping runs again but nothing new is emitted;
    fixing a processed message's data is the exception queue's job (fixes on the workflow, not the message).
    """
    reason = _check(actor, reason)
    raw = bytes(raw or b"").replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if not raw.strip():
        raise ValidationError("The edited message is empty.")
    try:
        parsed = connector_registry.get(message.connector.protocol).parse(raw)
    except Exception as exc:  # the reason goes back to the form; nothing is stored
        detail = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
        raise ValidationError(f"The edited message cannot be read: {detail}") from exc
    header = getattr(parsed, "header", None)
    copy = _copy(message, raw)
    copy.control_id = str(getattr(header, "control_id", "") or message.control_id)[:200]
    copy.message_type = str(getattr(header, "message_type", "") or message.message_type)[:40]
    copy.sender = str(getattr(header, "sender", "") or message.sender)[:200]
    copy.save()
    request = ReplayRequest.objects.create(
        kind=ReplayKind.EDIT,
        reason=reason,
        actor=actor,
        actor_username=actor.get_username(),
        criteria={"message_ids": [message.pk], "matched": 1, "edited": True},
        message_count=1,
    )
    ReplayItem.objects.create(
        request=request, original=message, original_number=message.pk, replay=copy, edited=True
    )
    transaction.on_commit(_enqueue_processing)
    logger.info("edit-and-replay %s of message %s by user %s", request.pk, message.pk, actor.pk)
    return request


def exception_replay(
    *, exception: ExceptionItem, destinations: list[Connector] | None, reason: str, actor: User
) -> ReplayRequest:
    """Replay the source message behind an exception (its own, its event's, or its delivery's)."""
    message = _source_message(exception)
    if message is None:
        raise ValidationError("This exception has no source message to replay.")
    return message_replay(
        messages=[message],
        destinations=destinations,
        reason=reason,
        actor=actor,
        kind=ReplayKind.EXCEPTION,
        criteria={"exception_id": exception.pk},
        exception=exception,
    )


def _source_message(exception: ExceptionItem) -> Message | None:
    if exception.message_id is not None:
        return exception.message
    if exception.event_id is not None and exception.event is not None and exception.event.message_id:
        return exception.event.message
    delivery = exception.delivery
    if delivery is not None and delivery.event is not None and delivery.event.message_id:
        return delivery.event.message
    return None


def _copy(message: Message, raw: bytes) -> Message:
    return Message(
        connector_id=message.connector_id,
        raw=raw,
        sha256=hashlib.sha256(raw).hexdigest(),
        sender=message.sender,
        control_id=message.control_id,
        message_type=message.message_type,
        business_key=message.business_key,
        # No dedupe key: the copy is knowingly a second copy, and the original keeps its place.
        dedupe_key=None,
        replay_of_id=message.pk,
        status=MessageStatus.RECEIVED,
        lane=Lane.BATCH,
        received_at=timezone.now(),
    )


def _resend_failed_deliveries(
    request: ReplayRequest, message_ids: list[int], destinations: list[Connector]
) -> dict[int, int]:
    """Send the failed deliveries of these messages' events again; succeeded ones keep their one effect."""
    deliveries = Delivery.objects.filter(event__message_id__in=message_ids)
    if destinations:
        deliveries = deliveries.filter(connector__in=destinations)
    resent: dict[int, int] = {}
    for delivery in deliveries.select_related("event").order_by("id"):
        if delivery.status == DeliveryStatus.FAILED:
            delivery_reset(delivery=delivery)
            request.deliveries_resent += 1
            assert delivery.event is not None
            resent[delivery.event.message_id] = resent.get(delivery.event.message_id, 0) + 1
        elif delivery.status == DeliveryStatus.SUCCEEDED:
            request.deliveries_unchanged += 1
    return resent


def _enqueue_processing() -> None:
    from django_q.tasks import async_task

    async_task("healthsync.tasks.process_pending", task_name="process_pending", group="replay")
