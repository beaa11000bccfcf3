"""Reads that views, the API and dashboards share."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Min
from django.utils import timezone

from healthsync.choices import Lane, MessageStatus


def lane_depths() -> list[dict[str, Any]]:
    """Per lane, in claim order: messages waiting, being processed, and the oldest waiting one's age.

    [{"lane": "clinical", "label": ..., "waiting": 3, "processing": 1, "oldest_received_at": dt | None,
      "oldest_age_seconds": 1.5}, ...]; every lane is listed, empty ones with zeros.
    """
    from healthsync.models import Message
    from healthsync.pipeline import LANE_PRIORITY

    rows = (
        Message.objects.filter(status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING])
        .values("lane", "status")
        .annotate(count=Count("id"), oldest=Min("received_at"))
        .order_by()
    )
    now = timezone.now()
    by_lane: dict[str, dict[str, Any]] = {
        lane: {
            "lane": lane,
            "label": Lane(lane).label,
            "waiting": 0,
            "processing": 0,
            "oldest_received_at": None,
            "oldest_age_seconds": 0.0,
        }
        for lane in LANE_PRIORITY
    }
    for row in rows:
        entry = by_lane.setdefault(
            row["lane"],
            {
                "lane": row["lane"],
                "label": row["lane"],
                "waiting": 0,
                "processing": 0,
                "oldest_received_at": None,
                "oldest_age_seconds": 0.0,
            },
        )
        key = "waiting" if row["status"] == MessageStatus.RECEIVED else "processing"
        entry[key] += row["count"]
        oldest = row["oldest"]
        if oldest is not None and (
            entry["oldest_received_at"] is None or oldest < entry["oldest_received_at"]
        ):
            entry["oldest_received_at"] = oldest
            entry["oldest_age_seconds"] = max((now - oldest).total_seconds(), 0.0)
    return list(by_lane.values())
