"""Event streams against the NATS JetStream server at 127.0.0.1:4222 (CI starts it): publish by type, replay
from a position, and a stream consumed as an inbound source with the ack after the store."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from connectors.streams import consumer
from connectors.streams.adapter import StreamAdapter, stream_for
from connectors.streams.base import encode
from connectors.streams.nats import NatsEventStream
from healthsync import ingest, pipeline
from healthsync.choices import DeliveryStatus, Direction, MessageStatus, Protocol, VersionStatus
from healthsync.deliveries import deliver
from healthsync.errors import ConnectorError
from healthsync.models import CanonicalEvent, Connector, Delivery, Message, SchemaVersion, System

SERVERS = ["nats://127.0.0.1:4222"]
pytestmark = pytest.mark.django_db


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    """A stream and subject prefix of this test's own, deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    names = {"stream": f"TEST_{tag.upper()}", "subject_prefix": f"test{tag}.events"}
    yield names
    NatsEventStream(SERVERS, stream=names["stream"], prefix=names["subject_prefix"]).delete_stream()


def _connector(direction: str, names: dict[str, str], **config: Any) -> Connector:
    system, _ = System.objects.get_or_create(code="bus", defaults={"name": "Event bus"})
    return Connector.objects.create(
        system=system,
        code=f"bus-{direction}",
        direction=direction,
        protocol=Protocol.STREAM,
        timeout_seconds=5,
        config={"servers": SERVERS, **names, **config},
    )


def _event(event_type: str, subject: str, **data: Any) -> CanonicalEvent:
    return CanonicalEvent.objects.create(
        type=event_type,
        source="ehr",
        subject=subject,
        idempotency_key=f"ehr:{event_type}:{subject}",
        data={"subject": subject, **data},
    )


def _publish_all() -> list[Delivery]:
    deliveries = list(Delivery.objects.filter(operation="publish_events").order_by("id"))
    for delivery in deliveries:
        assert deliver(delivery.pk) == DeliveryStatus.SUCCEEDED
        delivery.refresh_from_db()
    return deliveries


def test_events_are_published_by_type_and_replayed_from_a_position(names: dict[str, str]) -> None:
    connector = _connector(Direction.OUTBOUND, names, operations={"publish_events": {}})
    _event("claim.submitted", "C1", amount="10.00")
    _event("encounter.discharged", "V1")
    _event("claim.submitted", "C2", amount="20.00")

    deliveries = _publish_all()

    assert [d.external_id for d in deliveries] == [f"{names['stream']}:{n}" for n in (1, 2, 3)]
    assert deliveries[0].response["subject"] == f"{names['subject_prefix']}.claim.submitted"
    stream = stream_for(connector)
    claims = stream.replay(
        subjects=[f"{names['subject_prefix']}.claim.>"], start_sequence=1, limit=10, timeout=1.0
    )
    assert [json.loads(m.data)["subject"] for m in claims] == ["C1", "C2"]
    assert claims[0].message_id == deliveries[0].idempotency_key
    body = json.loads(claims[1].data)
    assert (body["specversion"], body["type"], body["data"]["amount"]) == ("1.0", "claim.submitted", "20.00")
    later = stream.replay(subjects=[f"{names['subject_prefix']}.>"], start_sequence=2, limit=10, timeout=1.0)
    assert [m.sequence for m in later] == [2, 3]


def test_a_resend_of_the_same_delivery_is_not_stored_twice(names: dict[str, str]) -> None:
    connector = _connector(Direction.OUTBOUND, names, operations={"publish_events": {}})
    _event("claim.submitted", "C1")
    (delivery,) = _publish_all()

    again = StreamAdapter().send(connector, delivery)

    assert again.response["duplicate"] is True
    assert again.external_id == delivery.external_id


def test_only_the_configured_event_types_are_published(names: dict[str, str]) -> None:
    _connector(Direction.OUTBOUND, names, operations={"publish_events": {"event_types": ["claim.*"]}})
    _event("claim.denied", "C9")
    _event("encounter.discharged", "V9")
    assert [d.payload["type"] for d in Delivery.objects.filter(operation="publish_events")] == [
        "claim.denied"
    ]


def test_an_unreachable_broker_is_a_transient_error_and_the_delivery_waits(names: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    connector = _connector(Direction.OUTBOUND, names, operations={"publish_events": {}})
    connector.config["servers"] = [f"nats://127.0.0.1:{port}"]
    connector.save()
    _event("claim.submitted", "C1")
    delivery = Delivery.objects.get(operation="publish_events")

    assert deliver(delivery.pk) == DeliveryStatus.RETRYING
    delivery.refresh_from_db()
    assert "NATS" in delivery.last_error


def test_config_is_validated() -> None:
    adapter = StreamAdapter()
    assert (
        adapter.validate_config(
            Direction.OUTBOUND, {"servers": SERVERS, "operations": {"publish_events": {}}}
        )
        == []
    )
    errors = adapter.validate_config(Direction.INBOUND, {"servers": ["http://x"], "stream": "a.b"})
    assert any("servers" in e for e in errors)
    assert any("stream" in e for e in errors)
    assert any("durable" in e for e in errors)


# Inbound ----------------------------------------------------------------------------------------------------


def _cloud_event(event_id: str, event_type: str = "partner.order.placed", **data: Any) -> bytes:
    return encode(
        {
            "specversion": "1.0",
            "id": event_id,
            "type": event_type,
            "source": "partner",
            "data": {"order": event_id, **data},
        }
    )


@pytest.fixture
def inbound(names: dict[str, str]) -> Connector:
    connector = _connector(Direction.INBOUND, names, durable=f"in-{uuid.uuid4().hex[:8]}")
    stream = stream_for(connector)
    prefix = names["subject_prefix"]
    stream.publish(f"{prefix}.partner.order.placed", _cloud_event("O1"), message_id="O1")
    stream.publish(f"{prefix}.partner.order.placed", _cloud_event("O2"), message_id="O2")
    stream.publish(f"{prefix}.partner.order.placed", b"not json at all", message_id="BAD1")
    return connector


def test_a_stream_is_stored_then_acknowledged_and_not_read_twice(inbound: Connector) -> None:
    assert consumer.consume(inbound, timeout=1.0) == 3
    assert consumer.consume(inbound, timeout=0.5) == 0

    rows = {m.control_id: m for m in Message.objects.filter(connector=inbound)}
    assert set(rows) == {"O1", "O2", "BAD1"}
    assert rows["O1"].message_type == "partner.order.placed"
    assert bytes(rows["O1"].raw) == _cloud_event("O1")
    assert rows["BAD1"].status == MessageStatus.REJECTED
    assert bytes(rows["BAD1"].raw) == b"not json at all"
    assert "not a CloudEvents JSON object" in rows["BAD1"].error


def test_nothing_is_acknowledged_when_the_store_fails(
    inbound: Connector, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest.store_messages

    def crash(items: Any, **kw: Any) -> Any:
        raise RuntimeError("database went away")

    monkeypatch.setattr(ingest, "store_messages", crash)
    with pytest.raises(RuntimeError):
        consumer.consume(inbound, timeout=1.0)
    monkeypatch.setattr(ingest, "store_messages", real)

    assert consumer.consume(inbound, timeout=1.0) == 3
    assert Message.objects.filter(connector=inbound).count() == 3


def test_a_consumed_cloud_event_becomes_a_canonical_event_once(inbound: Connector) -> None:
    SchemaVersion.objects.create(
        event_type="partner.order.placed",
        version="1.0.0",
        status=VersionStatus.ACTIVE,
        json_schema={"type": "object", "required": ["order"], "properties": {"order": {"type": "string"}}},
    )
    consumer.consume(inbound, timeout=1.0)
    first = Message.objects.get(connector=inbound, control_id="O1")

    assert pipeline.process_message(first.pk) == MessageStatus.PROCESSED

    event = CanonicalEvent.objects.get(type="partner.order.placed")
    assert (event.data, event.source_ref, event.idempotency_key) == (
        {"order": "O1"},
        "O1",
        "partner:partner.order.placed:O1",
    )
    # The same event stored again (a redelivery under another message id) does not emit a second time.
    stream = stream_for(inbound)
    stream.publish(
        f"{inbound.config['subject_prefix']}.partner.order.placed", _cloud_event("O1"), message_id="O1-again"
    )
    consumer.consume(inbound, timeout=1.0)
    assert pipeline.process_message(Message.objects.get(control_id="O1-again").pk) == MessageStatus.PROCESSED
    assert CanonicalEvent.objects.filter(type="partner.order.placed").count() == 1


def test_test_connection_reports_the_stream(names: dict[str, str]) -> None:
    connector = _connector(Direction.OUTBOUND, names, operations={"publish_events": {}})
    ok, detail = StreamAdapter().test_connection(connector)
    assert ok and names["stream"] in detail
    with pytest.raises(ConnectorError):
        StreamAdapter().send(connector, Delivery(operation="publish_events", idempotency_key="k", payload={}))


@pytest.mark.django_db(transaction=True)  # the command closes stale connections, as a long-running loop must
def test_the_consume_command_reads_every_inbound_stream_connector_once(inbound: Connector) -> None:
    out = StringIO()
    call_command("stream_consume", "--once", "--wait", "0.5", stdout=out)
    assert out.getvalue().strip() == "stored 3 stream message(s)"
    assert Message.objects.filter(connector=inbound).count() == 3


def test_events_the_pipeline_makes_are_published_to_the_stream(names: dict[str, str]) -> None:
    from connectors.simulators import hl7_builder
    from healthsync.seed import seed_reference_config
    from tests.pipeline_support import feed

    seed_reference_config()
    _connector(Direction.OUTBOUND, names, operations={"publish_events": {"event_types": ["encounter.*"]}})

    (message,) = feed(hl7_builder.adt_a01(encounter_id="V-STREAM"))

    assert message.status == MessageStatus.PROCESSED
    (delivery,) = _publish_all()
    assert delivery.payload["type"] == "encounter.admitted"
    stream = stream_for(Connector.objects.get(code="bus-outbound"))
    (published,) = stream.replay(
        subjects=[f"{names['subject_prefix']}.>"], start_sequence=1, limit=5, timeout=1.0
    )
    assert json.loads(published.data)["subject"] == "V-STREAM"
