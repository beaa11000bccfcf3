"""Canonical events reach the stream as deliveries: written with the event, sent after commit, retried.

A post_save hook on CanonicalEvent (the pipeline stays untouched) asks for one `publish_events` delivery on
the enabled outbound connector that offers it. Because the delivery row commits with the event, an event is
never lost when the broker is down; the delivery's idempotency key is the broker's message id, so a resend
inside the dedupe window is not stored twice.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from django.db.models.signals import post_save

from connectors.streams.adapter import PUBLISH_OPERATION
from connectors.streams.base import cloud_event
from healthsync.choices import Protocol
from healthsync.deliveries import connector_for_operation, delivery_request
from healthsync.models import CanonicalEvent, Connector

WORKFLOW = "event-stream"


def queue_event(
    sender: Any, instance: CanonicalEvent, created: bool = False, raw: bool = False, **_: Any
) -> None:
    if not created or raw:
        return
    try:
        connector = connector_for_operation(PUBLISH_OPERATION)
    except Connector.DoesNotExist:
        return
    if connector.protocol != Protocol.STREAM:
        return
    spec = (connector.config or {}).get("operations", {}).get(PUBLISH_OPERATION) or {}
    wanted = spec.get("event_types") or []
    if wanted and not any(fnmatchcase(instance.type, pattern) for pattern in wanted):
        return
    delivery_request(
        connector=connector,
        operation=PUBLISH_OPERATION,
        payload=cloud_event(instance),
        idempotency_key=f"{connector.code}:{instance.pk}",
        workflow=WORKFLOW,
        business_key=instance.subject[:200],
        event=instance,
    )


def connect() -> None:
    post_save.connect(queue_event, sender=CanonicalEvent, dispatch_uid="connectors.streams.publish")
