"""The sync runtime's outbound half: idempotent delivery requests, sending with retries, and their outcome.

A delivery is keyed by an idempotency key derived from (source system, object type, source id, version).
Asking twice for the same key returns the first delivery; the key also travels to the destination
(Idempotency-Key header, ERP external reference) so that a resend after a lost reply has no second effect.
The network call happens outside any database transaction; the claim before it and the outcome after it are
each atomic.
"""

from __future__ import annotations

import functools
import logging
import random
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from healthsync.choices import DeliveryStatus, Direction, ExceptionKind, ExceptionStatus
from healthsync.errors import ConnectorError
from healthsync.governance.ownership import delivery_block
from healthsync.inserts import insert_if_new
from healthsync.models import CanonicalEvent, Connector, Delivery, ExceptionItem
from healthsync.registry import SendResult, connector_registry, workflow_registry

logger = logging.getLogger(__name__)

OPERATION_LABELS = {
    "submit_claim": "the claim",
    "post_accrual": "the accrual journal entry",
}


def connector_for_operation(operation: str) -> Connector:
    """The enabled outbound connector whose config offers `operation`; raises Connector.DoesNotExist."""
    connectors = _CONNECTORS.get()
    if connectors is None:
        connectors = _outbound_connectors()
    for connector in connectors:
        operations = (connector.config or {}).get("operations") or {}
        if isinstance(operations, dict) and operation in operations:
            return connector
    raise Connector.DoesNotExist(f"No enabled outbound connector offers the operation {operation!r}")


def _outbound_connectors() -> list[Connector]:
    return list(Connector.objects.filter(direction=Direction.OUTBOUND, is_enabled=True).order_by("id"))


# Set for the length of a batch: the connectors are read once, like the mapping configuration, so a connector
# enabled or disabled meanwhile counts from the next batch on.
_CONNECTORS: ContextVar[list[Connector] | None] = ContextVar("healthsync_outbound_connectors", default=None)


@contextmanager
def connectors_snapshot() -> Iterator[None]:
    """Within the block, connector_for_operation reads the enabled outbound connectors once."""
    token = _CONNECTORS.set(_outbound_connectors())
    try:
        yield
    finally:
        _CONNECTORS.reset(token)


def delivery_request(
    *,
    connector: Connector,
    operation: str,
    payload: dict[str, Any],
    idempotency_key: str,
    workflow: str,
    business_key: str,
    event: CanonicalEvent | None = None,
) -> Delivery:
    """Ask for an effect at a destination once: an existing delivery with this key is returned as it is."""
    # Insert first: a new key is the common case, and the unique key decides a repeat in the same round trip
    # (ON CONFLICT DO NOTHING: no savepoint, no error to recover from).
    delivery = Delivery(
        connector=connector,
        operation=operation,
        idempotency_key=idempotency_key,
        payload=payload,
        workflow=workflow,
        business_key=business_key,
        event=event,
    )
    if not insert_if_new(delivery):
        return Delivery.objects.get(idempotency_key=idempotency_key)
    schedule_delivery(delivery.pk)
    return delivery


def schedule_delivery(delivery_id: int) -> None:
    """Send after the surrounding transaction commits (never for a delivery that was rolled back).

    The deliveries one transaction asks for go out in one django-q2 task (`deliver_many`), not one each: every
    delivery registers its own on-commit callback (so rolling back a savepoint drops only its own), and the
    first of a group's callbacks to run enqueues its delivery with every one registered after it.
    """
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        _enqueue([delivery_id])
        return
    group = getattr(connection, "_healthsync_deliveries", None)
    if group is None or group.sent:
        group = _DeliveryGroup()
        connection._healthsync_deliveries = group
    group.ids.append(delivery_id)
    transaction.on_commit(functools.partial(group.send_from, len(group.ids) - 1))


class _DeliveryGroup:
    """The deliveries scheduled since the last send on one connection, in order."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.sent = False

    def send_from(self, index: int) -> None:
        # Callbacks run in registration order, so the first one to run sends for the rest; an id whose
        # savepoint was rolled back may ride along, and deliver() treats a missing delivery as nothing to do.
        if self.sent:
            return
        self.sent = True
        _enqueue(self.ids[index:])


def _enqueue(delivery_ids: list[int]) -> None:
    from django_q.tasks import async_task

    if not delivery_ids:
        return
    if len(delivery_ids) == 1:
        delivery_id = delivery_ids[0]
        async_task(
            "healthsync.tasks.deliver", delivery_id, task_name=f"deliver-{delivery_id}", group="deliveries"
        )
        return
    async_task(
        "healthsync.tasks.deliver_many",
        list(delivery_ids),
        task_name=f"deliver-{delivery_ids[0]}-{len(delivery_ids)}",
        group="deliveries",
    )


def _claim(delivery_id: int) -> bool:
    now = timezone.now()
    claimed = (
        Delivery.objects.filter(pk=delivery_id, status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING])
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(status=DeliveryStatus.SENDING, sent_at=now)
    )
    return claimed == 1


def deliver_many(delivery_ids: list[int]) -> dict[int, str]:
    """Send each delivery in turn (one commit's worth); returns each one's status afterwards."""
    return {delivery_id: deliver(delivery_id) for delivery_id in delivery_ids}


def deliver(delivery_id: int) -> str:
    """Send one due delivery; returns its status afterwards. A delivery someone else holds is left alone."""
    if not _claim(delivery_id):
        return Delivery.objects.filter(pk=delivery_id).values_list("status", flat=True).first() or ""
    delivery = Delivery.objects.select_related("connector__system").get(pk=delivery_id)
    connector = delivery.connector
    blocked = delivery_block(delivery)  # a write into a system that does not own the data is never sent
    if blocked is not None:
        _notify(blocked)
        return blocked.status
    wait_until = breaker_gate(connector)
    if wait_until is not None:
        # The destination is known to be down: wait for the breaker without spending an attempt.
        Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.SENDING).update(
            status=DeliveryStatus.RETRYING, next_attempt_at=wait_until
        )
        return DeliveryStatus.RETRYING
    adapter = connector_registry.get(connector.protocol)
    try:
        result = adapter.send(connector, delivery)
    except ConnectorError as exc:
        return _record_failure(delivery_id, exc)
    except Exception as exc:  # a bug in an adapter must not leave the delivery stuck in "sending"
        logger.exception("delivery %s: adapter error", delivery_id)
        return _record_failure(delivery_id, ConnectorError(f"Internal error in the adapter: {exc!r}"))
    return _record_success(delivery_id, result)


def _record_success(delivery_id: int, result: SendResult) -> str:
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().select_related("connector").get(pk=delivery_id)
        now = timezone.now()
        delivery.status = DeliveryStatus.SUCCEEDED
        delivery.response = result.response
        delivery.external_id = str(result.external_id or "")[:200]
        delivery.succeeded_at = now
        delivery.last_error = ""
        delivery.attempts += 1
        delivery.next_attempt_at = None
        delivery.save()
        closed = Connector.objects.filter(pk=delivery.connector_id).exclude(breaker_open_until=None)
        if closed.update(consecutive_failures=0, breaker_open_until=None, breaker_opened_at=None):
            logger.warning(
                "connector %s: circuit breaker closed, the destination answers again", delivery.connector_id
            )
        else:
            Connector.objects.filter(pk=delivery.connector_id).exclude(consecutive_failures=0).update(
                consecutive_failures=0
            )
        for item in ExceptionItem.objects.open().filter(delivery=delivery):
            item.status = ExceptionStatus.RESOLVED
            item.resolved_at = now
            item.resolution_note = (
                f"Delivered on a later attempt ({delivery.external_id or 'no id returned'})."
            )
            item.save(update_fields=["status", "resolved_at", "resolution_note", "updated_at"])
        _notify(delivery)
    logger.info("delivery %s succeeded", delivery_id)
    return DeliveryStatus.SUCCEEDED


def _record_failure(delivery_id: int, exc: ConnectorError) -> str:
    with transaction.atomic():
        delivery = (
            Delivery.objects.select_for_update().select_related("connector__system").get(pk=delivery_id)
        )
        connector = delivery.connector
        now = timezone.now()
        delivery.attempts += 1
        delivery.last_error = exc.message[:2000]
        if exc.response is not None:
            delivery.response = exc.response
        if exc.permanent:
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = None
            delivery.save()
            _raise_exception(delivery, ExceptionKind.DESTINATION_REJECTED, exc)
            _notify(delivery)
            logger.info("delivery %s rejected by the destination", delivery_id)
            return delivery.status
        # F() so that concurrent workers failing on the same destination all count.
        Connector.objects.filter(pk=connector.pk).update(consecutive_failures=F("consecutive_failures") + 1)
        failures = Connector.objects.filter(pk=connector.pk).values_list("consecutive_failures", flat=True)[0]
        if failures >= connector.breaker_threshold:
            pause = breaker_pause(connector, failures)
            Connector.objects.filter(pk=connector.pk).update(breaker_open_until=now + pause)
            Connector.objects.filter(pk=connector.pk, breaker_opened_at=None).update(
                breaker_opened_at=now, breaker_trips=F("breaker_trips") + 1
            )
            logger.warning(
                "connector %s: circuit breaker open for %ss", connector.pk, int(pause.total_seconds())
            )
        if delivery.attempts >= connector.retry_max_attempts:
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = None
            delivery.save()
            _raise_exception(delivery, ExceptionKind.DESTINATION_DOWN, exc)
            _notify(delivery)
            logger.info("delivery %s failed after %s attempts", delivery_id, delivery.attempts)
            return delivery.status
        delivery.status = DeliveryStatus.RETRYING
        delivery.next_attempt_at = now + backoff(connector.retry_backoff_seconds, delivery.attempts)
        delivery.save()
        logger.info("delivery %s will retry (attempt %s)", delivery_id, delivery.attempts)
        return delivery.status


BREAKER_MIN_PAUSE = 30.0
BREAKER_MAX_PAUSE = 600.0


def breaker_pause(connector: Connector, failures: int) -> timedelta:
    """How long an open breaker pauses a destination: longer the longer it keeps failing, within bounds."""
    grown = connector.retry_backoff_seconds * 2 ** min(max(failures, connector.breaker_threshold), 16)
    return timedelta(seconds=min(BREAKER_MAX_PAUSE, max(BREAKER_MIN_PAUSE, grown)))


def breaker_gate(connector: Connector) -> Any:
    """None when a send to `connector` may go ahead, else the time to wait until.

    Closed: go. Open (breaker_open_until in the future): wait. Half-open (the pause is over): exactly one
    sender wins a conditional UPDATE and probes the destination while everyone else keeps waiting; the
    probe's success closes the breaker, its failure opens it again for a longer pause. The UPDATE is the
    arbiter, so this holds across worker processes and hosts.
    """
    open_until = connector.breaker_open_until
    if open_until is None:
        return None
    now = timezone.now()
    if open_until > now:
        return open_until
    probe_until = now + timedelta(seconds=connector.timeout_seconds * 2 + 5)
    won = Connector.objects.filter(pk=connector.pk, breaker_open_until=open_until).update(
        breaker_open_until=probe_until
    )
    if won == 1:
        logger.info("connector %s: circuit breaker half-open, probing", connector.pk)
        return None
    current = Connector.objects.filter(pk=connector.pk).values_list("breaker_open_until", flat=True).first()
    return current if current is not None and current > now else probe_until


def backoff(base_seconds: float, attempts: int) -> timedelta:
    """Exponential backoff with jitter: base * 2**(attempts-1), spread over 50-100% so retries do not herd."""
    delay = max(base_seconds, 0) * (2 ** max(attempts - 1, 0))
    return timedelta(seconds=delay * random.uniform(0.5, 1.0))


def _raise_exception(delivery: Delivery, kind: str, exc: ConnectorError) -> ExceptionItem:
    system = delivery.connector.system
    what = OPERATION_LABELS.get(delivery.operation, delivery.operation.replace("_", " "))
    if kind == ExceptionKind.DESTINATION_REJECTED:
        reason = f"{system.name} rejected {what} for {delivery.business_key}: {exc.message}"
    else:
        reason = (
            f"{system.name} could not be reached to send {what} for {delivery.business_key} "
            f"after {delivery.attempts} attempts: {exc.message}"
        )
    detail = {
        "operation": delivery.operation,
        "connector": delivery.connector.code,
        "attempts": delivery.attempts,
        "error": exc.message,
        "response": exc.response,
    }
    existing = ExceptionItem.objects.open().filter(delivery=delivery).first()
    if existing is not None:
        existing.kind, existing.reason, existing.detail = kind, reason, detail
        existing.save(update_fields=["kind", "reason", "detail", "updated_at"])
        return existing
    return ExceptionItem.objects.create(
        kind=kind,
        reason=reason,
        detail=detail,
        workflow=delivery.workflow,
        business_key=delivery.business_key,
        delivery=delivery,
        event=delivery.event,
        message=delivery.event.message if delivery.event_id else None,
    )


def _notify(delivery: Delivery) -> None:
    """Tell the workflow; a bug in its handler must not undo the recorded outcome of a real effect."""
    handler = workflow_registry.delivery_handlers.get(delivery.workflow)
    if handler is None:
        return
    try:
        with transaction.atomic():
            handler(delivery)
    except Exception:
        logger.exception("delivery %s: the %s handler failed", delivery.pk, delivery.workflow)
        trace = traceback.format_exc()
        Delivery.objects.filter(pk=delivery.pk).update(last_error=f"Workflow handler failed:\n{trace}"[:4000])


def delivery_reset(*, delivery: Delivery) -> Delivery:
    """Make a failed delivery due again (attempts start over) and send it after commit.

    A delivery that already succeeded is returned untouched: the destination has the effect.
    """
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
        if delivery.status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.SENDING):
            return delivery
        delivery.status = DeliveryStatus.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = None
        delivery.save(update_fields=["status", "attempts", "next_attempt_at"])
        schedule_delivery(delivery.pk)
    return delivery


def deliver_due(limit: int = 200) -> int:
    """Send every delivery whose retry time has come (run from a django-q2 schedule); returns how many."""
    now = timezone.now()
    _release_stuck(now)
    due = list(
        Delivery.objects.filter(status__in=[DeliveryStatus.RETRYING, DeliveryStatus.PENDING])
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    for delivery_id in due:
        deliver(delivery_id)
    return len(due)


def _release_stuck(now: Any) -> None:
    """A worker that died mid-send leaves a delivery in "sending": make it retryable after a generous wait.

    Resending is safe because the destination sees the same idempotency key.
    """
    for delivery in Delivery.objects.filter(status=DeliveryStatus.SENDING).select_related("connector"):
        if delivery.sent_at and delivery.sent_at < now - timedelta(
            seconds=delivery.connector.timeout_seconds * 3 + 60
        ):
            Delivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING).update(
                status=DeliveryStatus.RETRYING, next_attempt_at=now
            )
