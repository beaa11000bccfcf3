"""Event-stream adapter: canonical events out to a broker by type, a stream in as a message source.

Outbound config (one connector publishes every canonical event, or those matching `event_types`)::

    {
      "servers": ["nats://127.0.0.1:4222"],
      "stream": "HEALTHSYNC_EVENTS",                 # optional, this is the default
      "subject_prefix": "healthsync.events",         # optional; subject = <prefix>.<event type>
      "operations": {"publish_events": {"event_types": ["claim.*", "encounter.discharged"]}}   # [] or absent: all
    }

Inbound config: the same `servers`/`stream`/`subject_prefix`, plus `durable` (the consumer name; its position
survives restarts) and `subjects` (filters, default `<prefix>.>`). Messages are CloudEvents JSON; each becomes a
stored Message and then its canonical event (`events`), or goes through a mapping set for its type.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from connectors.json_message import JsonMessage
from connectors.json_message import parse as parse_json
from connectors.streams.base import DEFAULT_PREFIX, DEFAULT_STREAM, EventStream, encode, subject_for
from connectors.streams.nats import NatsEventStream
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery

PUBLISH_OPERATION = "publish_events"

_streams: dict[tuple[Any, ...], NatsEventStream] = {}
_streams_lock = threading.Lock()


def stream_for(connector: Connector) -> EventStream:
    """The broker connection for a stream connector (kept per process; the stream is checked once)."""
    config = connector.config or {}
    errors = validate_stream_config(connector.direction, config)
    if errors:
        raise ConnectorError(f"Connector {connector.code}: " + "; ".join(errors), permanent=True)
    key = (
        tuple(config["servers"]),
        _stream_name(config),
        _prefix(config),
        float(connector.timeout_seconds or 10),
    )
    with _streams_lock:
        stream = _streams.get(key)
        if stream is None:
            stream = _streams[key] = NatsEventStream(
                list(config["servers"]), stream=key[1], prefix=key[2], timeout=key[3]
            )
        return stream


def _stream_name(config: dict[str, Any]) -> str:
    return str(config.get("stream") or DEFAULT_STREAM)


def _prefix(config: dict[str, Any]) -> str:
    return str(config.get("subject_prefix") or DEFAULT_PREFIX)


def validate_stream_config(direction: str, config: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    servers = config.get("servers")
    if (
        not isinstance(servers, list)
        or not servers
        or not all(isinstance(s, str) and s.startswith(("nats://", "tls://")) for s in servers)
    ):
        errors.append("servers must be a list of nats:// or tls:// URLs")
    stream = config.get("stream", DEFAULT_STREAM)
    if not isinstance(stream, str) or not stream or any(c in stream for c in " .*>"):
        errors.append("stream must be a name without spaces, dots, * or >")
    prefix = config.get("subject_prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in " *>"):
        errors.append("subject_prefix must be a subject without spaces, * or >")
    if direction == Direction.OUTBOUND:
        operations = config.get("operations")
        spec = operations.get(PUBLISH_OPERATION) if isinstance(operations, dict) else None
        if not isinstance(spec, dict):
            errors.append(f'operations must contain "{PUBLISH_OPERATION}": {{"event_types": [...]}}')
        elif not isinstance(spec.get("event_types", []), list):
            errors.append("event_types must be a list of event types (* matches any part)")
    else:
        durable = config.get("durable")
        if not isinstance(durable, str) or not durable or any(c in durable for c in " .*>"):
            errors.append("durable must name the consumer (no spaces, dots, * or >)")
        subjects = config.get("subjects", [])
        if not isinstance(subjects, list) or not all(isinstance(s, str) and s for s in subjects):
            errors.append("subjects must be a list of subject filters")
    return errors


class StreamAdapter:
    protocol = Protocol.STREAM

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        return validate_stream_config(direction, config)

    def parse(self, raw: bytes) -> JsonMessage:
        return parse_json(raw)

    def events(self, raw: bytes) -> list[dict[str, Any]]:
        """The canonical event a CloudEvents message carries, keyed so that a redelivery or our own event
        coming back is not emitted twice."""
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConnectorError(f"The stream message is not JSON: {exc}", permanent=True) from exc
        missing = [k for k in ("type", "id", "source") if not isinstance(body, dict) or not body.get(k)]
        if missing:
            raise ConnectorError(
                f"The stream message is not a CloudEvent: {', '.join(missing)} missing", permanent=True
            )
        data = body.get("data")
        if not isinstance(data, dict):
            raise ConnectorError("The CloudEvent has no JSON object in data", permanent=True)
        return [
            {
                "type": str(body["type"]),
                "data": data,
                "idempotency_key": str(
                    body.get("idempotencykey") or f"{body['source']}:{body['type']}:{body['id']}"
                )[:300],
                "subject": str(body.get("subject") or ""),
                "occurred_at": body.get("time"),
                "source_ref": str(body["id"]),
                "correlation": body.get("correlation") if isinstance(body.get("correlation"), dict) else {},
            }
        ]

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        payload = delivery.payload or {}
        event_type = payload.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise ConnectorError(f"Delivery {delivery.pk} carries no event type to publish", permanent=True)
        subject = subject_for(_prefix(connector.config or {}), event_type)
        ack = stream_for(connector).publish(subject, encode(payload), message_id=delivery.idempotency_key)
        return SendResult(
            response={
                "stream": ack.stream,
                "sequence": ack.sequence,
                "subject": subject,
                "duplicate": ack.duplicate,
            },
            external_id=f"{ack.stream}:{ack.sequence}",
        )

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """Connect and make sure the stream exists (creating it for an outbound connector)."""
        try:
            stream_for(connector).ensure_stream()
        except ConnectorError as exc:
            return False, exc.message
        return True, f"JetStream stream {_stream_name(connector.config or {})} is reachable"
