"""Operations telemetry: per-minute rollups per connector, upserted, and the overview the ops page reads."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from healthsync.choices import DeliveryStatus, MessageStatus
from healthsync.models import CanonicalEvent, Connector, ConnectorMetric, Delivery, Message
from healthsync.seed import seed_reference_config
from healthsync.telemetry import connector_metrics, ops_overview, percentile, rollup
from tests.pipeline_support import store

pytestmark = pytest.mark.django_db

NOW = timezone.make_aware(datetime(2026, 3, 1, 10, 30, 20))
MINUTE = NOW.replace(second=0) - timedelta(minutes=2)  # 10:28


@pytest.fixture
def connectors() -> tuple[Connector, Connector]:
    seed_reference_config()
    return Connector.objects.get(code="ehr-adt-mllp"), Connector.objects.get(code="rcm-claims")


def _message(status: str, received: datetime, latency_ms: float | None) -> Message:
    message = store("MSH|^~\\&|A|B|C|D|20260101||ADT^A03|X|P|2.5.1\r")
    processed = received + timedelta(milliseconds=latency_ms) if latency_ms is not None else None
    Message.objects.filter(pk=message.pk).update(status=status, received_at=received, processed_at=processed)
    return message


def _delivery(connector: Connector, message: Message, status: str, at: datetime, attempts: int) -> None:
    event = CanonicalEvent.objects.create(
        type="t", source="s", subject="V", idempotency_key=f"k{message.pk}", message=message
    )
    Delivery.objects.create(
        connector=connector,
        operation="submit_claim",
        idempotency_key=f"d{message.pk}",
        status=status,
        attempts=attempts,
        event=event,
        sent_at=at,
        succeeded_at=at if status == DeliveryStatus.SUCCEEDED else None,
    )


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.95) == 5.0
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.95) == 95


def test_the_rollup_counts_traffic_errors_retries_and_latency_per_minute(connectors: tuple) -> None:
    ehr, rcm = connectors
    ok = [_message(MessageStatus.PROCESSED, MINUTE + timedelta(seconds=n), 100 * (n + 1)) for n in range(10)]
    _message(MessageStatus.FAILED, MINUTE + timedelta(seconds=30), 50)
    _message(MessageStatus.RECEIVED, NOW - timedelta(seconds=5), None)  # still queued
    _delivery(rcm, ok[0], DeliveryStatus.SUCCEEDED, MINUTE + timedelta(seconds=40), attempts=3)
    _delivery(rcm, ok[1], DeliveryStatus.FAILED, MINUTE + timedelta(seconds=45), attempts=5)
    _delivery(rcm, ok[2], DeliveryStatus.RETRYING, MINUTE + timedelta(seconds=50), attempts=1)

    rollup(now=NOW)
    inbound = ConnectorMetric.objects.get(connector=ehr, minute=MINUTE)
    assert (inbound.messages_in, inbound.processed, inbound.errors) == (11, 10, 1)
    assert inbound.processing_p50_ms == pytest.approx(500) and inbound.processing_p95_ms == pytest.approx(
        1000
    )
    outbound = ConnectorMetric.objects.get(connector=rcm, minute=MINUTE)
    assert (outbound.messages_out, outbound.errors, outbound.retries) == (1, 1, 2 + 4)
    assert outbound.delivery_p50_ms == pytest.approx(40_000)
    # Queue depth is a snapshot on the current minute's row.
    current = NOW.replace(second=0)
    assert ConnectorMetric.objects.get(connector=ehr, minute=current).queue_depth == 1
    assert ConnectorMetric.objects.get(connector=rcm, minute=current).queue_depth == 1


def test_rolling_up_again_updates_the_same_rows(connectors: tuple) -> None:
    ehr, _ = connectors
    _message(MessageStatus.PROCESSED, MINUTE, 10)
    rollup(now=NOW)
    count = ConnectorMetric.objects.count()
    _message(MessageStatus.PROCESSED, MINUTE + timedelta(seconds=1), 10)
    rollup(now=NOW)
    assert ConnectorMetric.objects.count() == count
    assert ConnectorMetric.objects.get(connector=ehr, minute=MINUTE).messages_in == 2


def test_the_overview_sums_the_window_and_shows_breaker_and_last_message(connectors: tuple) -> None:
    ehr, rcm = connectors
    last = _message(MessageStatus.PROCESSED, MINUTE, 200)
    _delivery(rcm, last, DeliveryStatus.SUCCEEDED, MINUTE + timedelta(seconds=3), attempts=1)
    Connector.objects.filter(pk=rcm.pk).update(
        breaker_open_until=NOW + timedelta(days=3650), consecutive_failures=5
    )
    rollup(now=NOW)
    lines = {line.connector.code: line for line in ops_overview(now=NOW)}
    assert lines["ehr-adt-mllp"].messages_in == 1 and lines[
        "ehr-adt-mllp"
    ].processing_p95_ms == pytest.approx(200)
    assert lines["ehr-adt-mllp"].last_message_at == MINUTE
    assert lines["rcm-claims"].messages_out == 1 and lines["rcm-claims"].breaker_state == "open"
    assert lines["rcm-claims"].last_message_at == MINUTE + timedelta(seconds=3)
    assert list(connector_metrics(connector=ehr, since=MINUTE)) == list(
        ConnectorMetric.objects.filter(connector=ehr).order_by("minute")
    )
