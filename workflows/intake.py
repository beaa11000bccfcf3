"""Canonical events that arrive without an HL7 mapping (REST/JSON feeds, batch files, other workflows).

`emit_event` stores the event once per (source, type, source_ref), with the same lineage fields the pipeline
writes, and routes it to the workflow handlers exactly as the pipeline does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from healthsync.models import CanonicalEvent, Message
from healthsync.registry import workflow_registry


def emit_event(
    *,
    type: str,
    source: str,
    subject: str,
    data: dict[str, Any],
    source_ref: str,
    occurred_at: datetime | None = None,
    facility: str = "",
    correlation: dict[str, Any] | None = None,
    message: Message | None = None,
) -> CanonicalEvent | None:
    """Store and route one event; None when an event with this key was already emitted (a duplicate feed)."""
    key = f"{source}:{type}:{source_ref}"
    if CanonicalEvent.objects.filter(idempotency_key=key).exists():
        return None
    try:
        with transaction.atomic():
            event = CanonicalEvent.objects.create(
                type=type,
                source=source,
                subject=subject,
                occurred_at=occurred_at or timezone.now(),
                facility=facility[:80],
                idempotency_key=key,
                source_ref=source_ref,
                correlation=correlation or {},
                data=data,
                message=message,
            )
    except IntegrityError:
        return None
    for handler in workflow_registry.handlers_for(type):
        handler(event)
    return event
