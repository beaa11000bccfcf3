"""Operations telemetry: per connector and minute, traffic, errors, retries, queue depth and latency.

`rollup()` (the telemetry-rollup job, every minute) recomputes the ConnectorMetric rows of the last few minutes
from the message store and the deliveries, upserting by (connector, minute) so that running it twice, or late,
gives the same rows. Dashboards read the rollup, never the raw tables, so a page over a day reads 1,440 rows
per connector whatever the traffic.

What is counted where: an inbound connector's minute has the messages received (in), processed and failed or
rejected (errors), and the receive → processed latency of the messages processed in it. An outbound
connector's minute has the deliveries that succeeded (out) or failed (errors), the retries they needed
(attempts beyond the first) and the receive → delivered latency measured from the source message. Queue depth
is a snapshot: waiting messages or deliveries when the minute was last rolled up.
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min, QuerySet
from django.utils import timezone

from healthsync.choices import DeliveryStatus, Direction, MessageStatus
from healthsync.models import Connector, ConnectorMetric, Delivery, Message

logger = logging.getLogger(__name__)

LOOKBACK_MINUTES = 5
_FIELDS = [
    "messages_in",
    "processed",
    "errors",
    "messages_out",
    "retries",
    "queue_depth",
    "processing_p50_ms",
    "processing_p95_ms",
    "delivery_p50_ms",
    "delivery_p95_ms",
]


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (share in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-share * len(ordered) // 1))))
    return ordered[rank - 1]


def rollup(
    *, since: datetime | None = None, until: datetime | None = None, now: datetime | None = None
) -> int:
    """Recompute the per-minute rows from `since` (default: a few minutes back) to now; returns rows written."""
    now = now or timezone.now()
    until = until or minute_of(now) + timedelta(minutes=1)
    since = minute_of(since or now - timedelta(minutes=LOOKBACK_MINUTES))
    buckets: dict[tuple[int, datetime], dict[str, Any]] = defaultdict(
        lambda: {"processing": [], "delivery": [], "messages_in": 0, "processed": 0, "errors": 0,
                 "messages_out": 0, "retries": 0}
    )  # fmt: skip

    received = Message.objects.filter(received_at__gte=since, received_at__lt=until)
    for connector_id, received_at in received.values_list("connector_id", "received_at").iterator():
        buckets[(connector_id, minute_of(received_at))]["messages_in"] += 1
    finished = Message.objects.filter(processed_at__gte=since, processed_at__lt=until)
    for connector_id, status, received_at, processed_at in finished.values_list(
        "connector_id", "status", "received_at", "processed_at"
    ).iterator():
        bucket = buckets[(connector_id, minute_of(processed_at))]
        if status in (MessageStatus.FAILED, MessageStatus.REJECTED):
            bucket["errors"] += 1
        else:
            bucket["processed"] += 1
            bucket["processing"].append((processed_at - received_at).total_seconds() * 1000)
    rejected = received.filter(status=MessageStatus.REJECTED, processed_at__isnull=True)
    for connector_id, received_at in rejected.values_list("connector_id", "received_at").iterator():
        buckets[(connector_id, minute_of(received_at))]["errors"] += 1

    delivered = Delivery.objects.filter(
        status=DeliveryStatus.SUCCEEDED, succeeded_at__gte=since, succeeded_at__lt=until
    )
    for connector_id, attempts, succeeded_at, message_received_at in delivered.values_list(
        "connector_id", "attempts", "succeeded_at", "event__message__received_at"
    ).iterator():
        bucket = buckets[(connector_id, minute_of(succeeded_at))]
        bucket["messages_out"] += 1
        bucket["retries"] += max(attempts - 1, 0)
        if message_received_at is not None:
            bucket["delivery"].append((succeeded_at - message_received_at).total_seconds() * 1000)
    # A failed delivery has no finish time of its own; its last send is when it failed.
    failed = Delivery.objects.filter(status=DeliveryStatus.FAILED, sent_at__gte=since, sent_at__lt=until)
    for connector_id, attempts, sent_at in failed.values_list(
        "connector_id", "attempts", "sent_at"
    ).iterator():
        bucket = buckets[(connector_id, minute_of(sent_at))]
        bucket["errors"] += 1
        bucket["retries"] += max(attempts - 1, 0)

    current = minute_of(now)
    depths = queue_depths()
    for connector_id in depths:
        if since <= current < until:
            buckets[(connector_id, current)]  # every connector gets a row for the current minute

    rows = []
    for (connector_id, minute), bucket in buckets.items():
        rows.append(
            ConnectorMetric(
                connector_id=connector_id,
                minute=minute,
                messages_in=bucket["messages_in"],
                processed=bucket["processed"],
                errors=bucket["errors"],
                messages_out=bucket["messages_out"],
                retries=bucket["retries"],
                queue_depth=depths.get(connector_id, 0) if minute == current else 0,
                processing_p50_ms=percentile(bucket["processing"], 0.5),
                processing_p95_ms=percentile(bucket["processing"], 0.95),
                delivery_p50_ms=percentile(bucket["delivery"], 0.5),
                delivery_p95_ms=percentile(bucket["delivery"], 0.95),
            )
        )
    # Queue depth is a snapshot taken in its own minute: recomputing earlier minutes must keep theirs (the
    # queue-growth alert reads that history), so only the current minute's rows update it.
    for batch, fields in (
        ([r for r in rows if r.minute == current], _FIELDS),
        ([r for r in rows if r.minute != current], [f for f in _FIELDS if f != "queue_depth"]),
    ):
        if batch:
            ConnectorMetric.objects.bulk_create(
                batch, update_conflicts=True, unique_fields=["connector", "minute"], update_fields=fields
            )
    return len(rows)


def queue_depths() -> dict[int, int]:
    """Waiting work per connector now: messages not yet processed (inbound), deliveries not yet done (out)."""
    depths: dict[int, int] = {c: 0 for c in Connector.objects.values_list("pk", flat=True)}
    waiting = Message.objects.filter(status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING])
    for row in waiting.values("connector_id").annotate(n=Count("id")).order_by():
        depths[row["connector_id"]] = row["n"]
    pending = Delivery.objects.filter(
        status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING, DeliveryStatus.SENDING]
    )
    for row in pending.values("connector_id").annotate(n=Count("id")).order_by():
        depths[row["connector_id"]] = depths.get(row["connector_id"], 0) + row["n"]
    return depths


def rollup_job(context: Any) -> None:
    context.set("rows", rollup())


# Selectors ----------------------------------------------------------------------------------------------------


def connector_metrics(
    *, connector: Connector | None = None, since: datetime, until: datetime | None = None
) -> QuerySet[ConnectorMetric]:
    """The per-minute rows of one connector (or all) in a time window, oldest first (for charts)."""
    metrics = ConnectorMetric.objects.filter(minute__gte=since)
    if until is not None:
        metrics = metrics.filter(minute__lt=until)
    if connector is not None:
        metrics = metrics.filter(connector=connector)
    return metrics.order_by("minute", "connector_id")


@dataclass(frozen=True)
class ConnectorOps:
    """One connector's line on the operations page."""

    connector: Connector
    messages_in: int
    processed: int
    messages_out: int
    errors: int
    retries: int
    queue_depth: int
    processing_p50_ms: float | None
    processing_p95_ms: float | None
    delivery_p50_ms: float | None
    delivery_p95_ms: float | None
    last_message_at: datetime | None

    @property
    def breaker_state(self) -> str:
        return self.connector.breaker_state


def ops_overview(*, window_minutes: int = 60, now: datetime | None = None) -> list[ConnectorOps]:
    """Per connector over the last `window_minutes`: totals from the rollup, live queue depth and breaker.

    Latency: p50 is the median of the per-minute medians; p95 is the worst minute's p95 (a ceiling, which is
    what an on-call engineer needs from a one-hour view).
    """
    now = now or timezone.now()
    since = minute_of(now - timedelta(minutes=window_minutes))
    per_connector: dict[int, list[ConnectorMetric]] = defaultdict(list)
    for metric in ConnectorMetric.objects.filter(minute__gte=since):
        per_connector[metric.connector_id].append(metric)
    depths = queue_depths()
    lines = []
    for connector in Connector.objects.select_related("system").order_by("direction", "code"):
        rows = per_connector.get(connector.pk, [])
        # One index probe per connector (message_connector_time, delivery_last_success), not a scan of all.
        if connector.direction == Direction.INBOUND:
            last = Message.objects.filter(connector=connector).order_by("-received_at")
            last_at = last.values_list("received_at", flat=True).first()
        else:
            last = Delivery.objects.filter(connector=connector, status=DeliveryStatus.SUCCEEDED)
            last_at = last.order_by("-succeeded_at").values_list("succeeded_at", flat=True).first()
        lines.append(
            ConnectorOps(
                connector=connector,
                messages_in=sum(r.messages_in for r in rows),
                processed=sum(r.processed for r in rows),
                messages_out=sum(r.messages_out for r in rows),
                errors=sum(r.errors for r in rows),
                retries=sum(r.retries for r in rows),
                queue_depth=depths.get(connector.pk, 0),
                processing_p50_ms=_median(r.processing_p50_ms for r in rows),
                processing_p95_ms=_worst(r.processing_p95_ms for r in rows),
                delivery_p50_ms=_median(r.delivery_p50_ms for r in rows),
                delivery_p95_ms=_worst(r.delivery_p95_ms for r in rows),
                last_message_at=last_at,
            )
        )
    return lines


def _median(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _worst(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def rollup_span() -> tuple[datetime | None, datetime | None]:
    """The oldest and newest rolled-up minute."""
    span = ConnectorMetric.objects.aggregate(first=Min("minute"), last=Max("minute"))
    return span["first"], span["last"]
