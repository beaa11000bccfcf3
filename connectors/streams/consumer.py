"""A stream as an inbound source: fetch, store in the message store, then acknowledge.

The acknowledgement goes to the broker only after `ingest.store_messages` committed, so a crash in between
means a redelivery, which the message store's dedupe (connector, sender, message id) keeps as a duplicate.
"""

from __future__ import annotations

import json
import logging

from connectors.streams.adapter import _prefix, _stream_name, stream_for
from connectors.streams.base import StreamMessage
from healthsync import ingest
from healthsync.choices import Direction, Lane, MessageStatus, Protocol
from healthsync.errors import ConnectorError
from healthsync.models import Connector

logger = logging.getLogger(__name__)


def item_for(connector: Connector, message: StreamMessage) -> ingest.InboundItem:
    """The message store row for one stream message; anything that is not a CloudEvent is kept, rejected."""
    stream = _stream_name(connector.config or {})
    control_id = message.message_id or f"{stream}:{message.sequence}"
    try:
        body = json.loads(message.data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or not body.get("type"):
        return ingest.InboundItem(
            connector_id=connector.pk,
            raw=message.data,
            sender=f"nats:{stream}",
            control_id=control_id,
            message_type="",
            lane=Lane.CLINICAL,
            status=MessageStatus.REJECTED,
            error=f"Stream message {stream}#{message.sequence} on {message.subject} is not a CloudEvents JSON object",
        )
    return ingest.InboundItem(
        connector_id=connector.pk,
        raw=message.data,
        sender=f"nats:{stream}",
        control_id=control_id,
        message_type=str(body["type"])[:40],
    )


def consume(connector: Connector, *, batch: int = 100, timeout: float = 1.0) -> int:
    """Store and acknowledge up to `batch` messages waiting for `connector`'s durable consumer; how many."""
    config = connector.config or {}
    subjects = list(config.get("subjects") or [f"{_prefix(config)}.>"])

    def store(messages: list[StreamMessage]) -> None:
        ingest.store_messages([item_for(connector, m) for m in messages])

    return stream_for(connector).consume(
        durable=str(config["durable"]), subjects=subjects, batch=batch, timeout=timeout, handle=store
    )


def consume_all(batch: int = 500, timeout: float = 1.0) -> int:
    """One round over every enabled inbound stream connector (the scheduled job); messages stored."""
    stored = 0
    connectors = Connector.objects.filter(
        protocol=Protocol.STREAM, direction=Direction.INBOUND, is_enabled=True
    )
    for connector in connectors:
        try:
            while True:
                count = consume(connector, batch=batch, timeout=timeout)
                stored += count
                if count < batch:
                    break
        except ConnectorError as exc:
            logger.warning("stream connector %s: %s", connector.code, exc.message)
    return stored
