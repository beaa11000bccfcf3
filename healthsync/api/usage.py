"""Per-client, per-minute usage rollup: calls, errors and latency; the rate limit reads the same counter."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Max, Sum, Value
from django.db.models.functions import Greatest

from healthsync.models import ApiClient, ApiUsage


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _bump(client_id: int, minute: datetime, *, calls: int, errors: int, latency_ms: float | None) -> None:
    updates: dict = {"calls": F("calls") + calls, "errors": F("errors") + errors}
    if latency_ms is not None:
        updates["latency_ms_total"] = F("latency_ms_total") + latency_ms
        updates["latency_ms_max"] = Greatest(F("latency_ms_max"), Value(latency_ms))
    rows = ApiUsage.objects.filter(client_id=client_id, minute=minute)
    if rows.update(**updates):
        return
    try:
        with transaction.atomic():
            ApiUsage.objects.create(
                client_id=client_id,
                minute=minute,
                calls=calls,
                errors=errors,
                latency_ms_total=latency_ms or 0.0,
                latency_ms_max=latency_ms or 0.0,
            )
    except IntegrityError:
        # Another process created this minute's row between our update and insert.
        rows.update(**updates)


def usage_count_call(*, client: ApiClient, now: datetime) -> int:
    """Count one call in the client's current minute and return the minute's calls so far."""
    minute = minute_of(now)
    _bump(client.pk, minute, calls=1, errors=0, latency_ms=None)
    return ApiUsage.objects.filter(client_id=client.pk, minute=minute).values_list("calls", flat=True).get()


def usage_record(*, client: ApiClient, now: datetime, latency_ms: float, error: bool, counted: bool) -> None:
    """Add a finished call's outcome to the rollup; `counted` says the rate limiter already counted it."""
    _bump(client.pk, minute_of(now), calls=0 if counted else 1, errors=int(error), latency_ms=latency_ms)
    # Touching last_used_at at most once a minute keeps the hot path to one small update.
    if client.last_used_at is None or now - client.last_used_at >= timedelta(minutes=1):
        ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)


def usage_summary(*, since: datetime) -> dict[int, dict[str, float]]:
    """Calls, errors and latency per client since `since`, for the console."""
    rows = (
        ApiUsage.objects.filter(minute__gte=minute_of(since))
        .values("client_id")
        .annotate(
            calls=Sum("calls"),
            errors=Sum("errors"),
            latency_total=Sum("latency_ms_total"),
            latency_max=Max("latency_ms_max"),
        )
    )
    summary: dict[int, dict[str, float]] = {}
    for row in rows:
        calls = row["calls"] or 0
        summary[row["client_id"]] = {
            "calls": calls,
            "errors": row["errors"] or 0,
            "latency_ms_avg": (row["latency_total"] or 0.0) / calls if calls else 0.0,
            "latency_ms_max": row["latency_max"] or 0.0,
        }
    return summary
