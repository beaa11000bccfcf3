"""What any event-stream broker offers HealthSync: publish by event type, read durably, replay from a position.

NATS JetStream fills it (nats.py); a Kafka implementation would map a subject to a topic (or a key within one),
a stream sequence to an offset, and a durable consumer to a consumer group.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from healthsync.models import CanonicalEvent

DEFAULT_PREFIX = "healthsync.events"
DEFAULT_STREAM = "HEALTHSYNC_EVENTS"
_TOKEN = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class PublishAck:
    """Where the broker put a published event; `duplicate` when it had it already (same message id)."""

    stream: str
    sequence: int
    duplicate: bool = False


@dataclass(frozen=True)
class StreamMessage:
    """One event read from a stream, with its position."""

    subject: str
    data: bytes
    sequence: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def message_id(self) -> str:
        return self.headers.get("Nats-Msg-Id", "")


class EventStream(Protocol):
    """A broker connection. Every call blocks until the broker answered (or raises ConnectorError)."""

    def ensure_stream(self) -> None:
        """Create the stream for this subject prefix if it is not there."""

    def publish(self, subject: str, data: bytes, *, message_id: str) -> PublishAck:
        """Append `data` under `subject`; a repeat of `message_id` within the dedupe window is not stored twice."""

    def consume(
        self, *, durable: str, subjects: list[str], batch: int, timeout: float, handle: BatchHandler
    ) -> int:
        """Hand up to `batch` unacknowledged messages to `handle` at once, and acknowledge them once it returns.

        If `handle` raises (or the process dies first) nothing is acknowledged and the broker delivers the
        messages again, so `handle` must store before it returns. Returns how many were acknowledged.
        """

    def replay(
        self, *, subjects: list[str], start_sequence: int, limit: int, timeout: float
    ) -> list[StreamMessage]:
        """Up to `limit` messages from `start_sequence` on, without moving any durable position."""

    def close(self) -> None: ...


BatchHandler = Callable[[list[StreamMessage]], None]


def subject_for(prefix: str, event_type: str) -> str:
    """healthsync.events.<type>: a subscriber chooses by type with a subject filter (`healthsync.events.claim.>`)."""
    return f"{prefix}.{_TOKEN.sub('_', event_type)}"


def cloud_event(event: CanonicalEvent) -> dict[str, Any]:
    """The CloudEvents 1.0 JSON form of a canonical event, as published."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(event.pk),
        "type": event.type,
        "source": event.source,
        "subject": event.subject,
        "time": event.occurred_at.isoformat() if event.occurred_at else event.recorded_at.isoformat(),
        "datacontenttype": "application/json",
        "idempotencykey": event.idempotency_key,
        "data": event.data,
    }
    if event.facility:
        body["facility"] = event.facility
    if event.correlation:
        body["correlation"] = event.correlation
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str).encode()
