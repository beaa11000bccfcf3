"""Operations alerts: a connector gone quiet in its expected hours, a queue above its threshold or growing
(higher at each of the last N minutes' rollups than the minute before).

The `ops-alerts` job (every minute) calls `alerts_evaluate()`: it raises an alert the first time a condition
holds, keeps it up to date while it lasts, and clears it when it ends; an engineer may acknowledge an open
alert (it stays open until the condition ends). Thresholds come from the connector's config,

    config["alerts"] = {"quiet_minutes": 15, "queue_depth": 200, "growth_minutes": 5, "hours": [7, 19]}

with the settings HEALTHSYNC_ALERT_* as defaults; 0 switches a check off; "hours" (local, [start, end),
may wrap past midnight) limits the quiet check to when traffic is expected. Raising and clearing is logged
(connector code, kind, figures; never message content).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from healthsync.choices import OPEN_ALERT_STATES, AlertKind, AlertState
from healthsync.models import Connector, ConnectorAlert, ConnectorMetric
from healthsync.telemetry import ConnectorOps, minute_of, ops_overview

logger = logging.getLogger(__name__)


class AlertConfigError(ValueError):
    """A connector's config["alerts"] cannot be read; the message names the key and the value."""


@dataclass(frozen=True)
class AlertThresholds:
    """The thresholds in force for one connector (0: that check is off)."""

    quiet_minutes: int
    queue_depth: int
    growth_minutes: int
    hours: tuple[int, int] | None = None

    def expects_traffic(self, moment: datetime) -> bool:
        if self.hours is None:
            return True
        start, end = self.hours
        hour = timezone.localtime(moment).hour
        return start <= hour < end if start <= end else hour >= start or hour < end


def _non_negative_int(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AlertConfigError(
            f'alerts["{key}"] must be a whole number ≥ 0 (0 switches it off), got {value!r}'
        )
    return value


def alert_thresholds(connector: Connector) -> AlertThresholds:
    """The connector's thresholds: its config["alerts"] over the settings' defaults."""
    config = (connector.config or {}).get("alerts") or {}
    if not isinstance(config, dict):
        raise AlertConfigError(f'"alerts" must be an object, got {config!r}')
    unknown = set(config) - {"quiet_minutes", "queue_depth", "growth_minutes", "hours"}
    if unknown:
        raise AlertConfigError(f"unknown alert setting(s): {', '.join(sorted(unknown))}")
    hours = config.get("hours")
    if hours is not None:
        if (
            not isinstance(hours, list | tuple)
            or len(hours) != 2
            or not all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h <= 24 for h in hours)
            or hours[0] == hours[1]
        ):
            raise AlertConfigError(f'alerts["hours"] must be [start, end] local hours 0-24, got {hours!r}')
        hours = (hours[0], hours[1])
    return AlertThresholds(
        quiet_minutes=_non_negative_int(config, "quiet_minutes", settings.HEALTHSYNC_ALERT_QUIET_MINUTES),
        queue_depth=_non_negative_int(config, "queue_depth", settings.HEALTHSYNC_ALERT_QUEUE_DEPTH),
        growth_minutes=_non_negative_int(
            config, "growth_minutes", settings.HEALTHSYNC_ALERT_QUEUE_GROWTH_MINUTES
        ),
        hours=hours,
    )


@dataclass(frozen=True)
class Finding:
    """A condition the check found on a connector now."""

    kind: str
    value: float
    threshold: float
    message: str


def _findings(
    line: ConnectorOps, thresholds: AlertThresholds, depth_history: list[int], now: datetime
) -> list[Finding]:
    found = []
    if thresholds.quiet_minutes and thresholds.expects_traffic(now):
        # A connector that never carried anything is quiet since it was created.
        last = line.last_message_at or line.connector.created_at
        quiet = (now - last).total_seconds() / 60
        if quiet >= thresholds.quiet_minutes:
            found.append(
                Finding(
                    AlertKind.QUIET,
                    round(quiet, 1),
                    thresholds.quiet_minutes,
                    f"No message for {quiet:.0f} min (threshold {thresholds.quiet_minutes} min)",
                )
            )
    if thresholds.queue_depth and line.queue_depth > thresholds.queue_depth:
        found.append(
            Finding(
                AlertKind.QUEUE_DEPTH,
                line.queue_depth,
                thresholds.queue_depth,
                f"Queue depth {line.queue_depth} above {thresholds.queue_depth}",
            )
        )
    if thresholds.growth_minutes and _growing([*depth_history, line.queue_depth], thresholds.growth_minutes):
        start = depth_history[-thresholds.growth_minutes]
        found.append(
            Finding(
                AlertKind.QUEUE_GROWING,
                line.queue_depth,
                thresholds.growth_minutes,
                f"Queue grew from {start} to {line.queue_depth} over {thresholds.growth_minutes} min",
            )
        )
    return found


def _growing(depths: list[int], minutes: int) -> bool:
    """Whether each of the last `minutes` + 1 samples is higher than the one before."""
    if len(depths) < minutes + 1:
        return False
    window = depths[-(minutes + 1) :]
    return all(b > a for a, b in pairwise(window))


def _depth_histories(minutes: int, now: datetime) -> dict[int, list[int]]:
    """Per connector, the rolled-up queue depth of each of the last `minutes` whole minutes (oldest first).

    A minute with no row breaks the series (the rollup was not running): the history restarts after it.
    """
    if minutes <= 0:
        return {}
    current = minute_of(now)
    first = current - timedelta(minutes=minutes)
    rows = ConnectorMetric.objects.filter(minute__gte=first, minute__lt=current).order_by("minute")
    series: dict[int, list[tuple[datetime, int]]] = {}
    for connector_id, minute, depth in rows.values_list("connector_id", "minute", "queue_depth"):
        series.setdefault(connector_id, []).append((minute, depth))
    histories = {}
    for connector_id, points in series.items():
        kept: list[int] = []
        expected = first
        for minute, depth in points:
            if minute != expected:
                kept = []
            kept.append(depth)
            expected = minute + timedelta(minutes=1)
        histories[connector_id] = kept if expected == current else []
    return histories


def alerts_evaluate(*, now: datetime | None = None) -> dict[str, Any]:
    """Raise, refresh and clear the alerts of every enabled connector; returns counts and config errors."""
    now = now or timezone.now()
    lines = [line for line in ops_overview(window_minutes=1, now=now) if line.connector.is_enabled]
    thresholds: dict[int, AlertThresholds] = {}
    bad_config: dict[str, str] = {}
    for line in lines:
        try:
            thresholds[line.connector.pk] = alert_thresholds(line.connector)
        except AlertConfigError as exc:
            bad_config[line.connector.code] = str(exc)
    longest = max((t.growth_minutes for t in thresholds.values()), default=0)
    histories = _depth_histories(longest, now)
    open_alerts: dict[tuple[int, str], ConnectorAlert] = {
        (alert.connector_id, alert.kind): alert
        for alert in ConnectorAlert.objects.filter(state__in=OPEN_ALERT_STATES).select_related("connector")
    }
    counts = {"raised": 0, "cleared": 0, "open": 0}
    still_open: set[tuple[int, str]] = set()
    for line in lines:
        limits = thresholds.get(line.connector.pk)
        if limits is None:
            # Bad config: keep whatever is open as it is rather than clear it on a guess.
            still_open.update(key for key in open_alerts if key[0] == line.connector.pk)
            continue
        for finding in _findings(line, limits, histories.get(line.connector.pk, []), now):
            key = (line.connector.pk, finding.kind)
            still_open.add(key)
            alert = open_alerts.get(key)
            if alert is None:
                if _raise(line.connector, finding, now):
                    counts["raised"] += 1
            else:
                ConnectorAlert.objects.filter(pk=alert.pk).update(
                    last_seen_at=now, value=finding.value, message=finding.message
                )
    for key, alert in open_alerts.items():
        if key not in still_open:
            cleared = ConnectorAlert.objects.filter(pk=alert.pk, state__in=OPEN_ALERT_STATES).update(
                state=AlertState.CLEARED, cleared_at=now
            )
            if cleared:
                counts["cleared"] += 1
                logger.info(
                    "ops alert cleared: connector=%s kind=%s alert=%s",
                    alert.connector.code,
                    alert.kind,
                    alert.pk,
                )
    counts["open"] = ConnectorAlert.objects.filter(state__in=OPEN_ALERT_STATES).count()
    return {**counts, "bad_config": bad_config}


def _raise(connector: Connector, finding: Finding, now: datetime) -> bool:
    try:
        with transaction.atomic():
            alert = ConnectorAlert.objects.create(
                connector=connector,
                kind=finding.kind,
                message=finding.message,
                value=finding.value,
                threshold=finding.threshold,
                raised_at=now,
                last_seen_at=now,
            )
    except IntegrityError:
        # Another run raised it a moment ago (the partial unique index keeps one open alert per kind).
        return False
    logger.warning(
        "ops alert raised: connector=%s kind=%s value=%s threshold=%s alert=%s",
        connector.code,
        finding.kind,
        finding.value,
        finding.threshold,
        alert.pk,
    )
    return True


@transaction.atomic
def alert_acknowledge(*, alert: ConnectorAlert, actor: Any) -> bool:
    """Mark a raised alert as seen by `actor`; False when it was already acknowledged or has cleared."""
    changed = ConnectorAlert.objects.filter(pk=alert.pk, state=AlertState.RAISED).update(
        state=AlertState.ACKNOWLEDGED, acknowledged_at=timezone.now(), acknowledged_by=actor
    )
    if changed:
        alert.refresh_from_db()
        logger.info("ops alert acknowledged: alert=%s by user=%s", alert.pk, actor.pk)
    return bool(changed)


def open_alerts() -> list[ConnectorAlert]:
    """Open alerts, newest first, for the operations page and the header."""
    return list(
        ConnectorAlert.objects.filter(state__in=OPEN_ALERT_STATES)
        .select_related("connector", "acknowledged_by")
        .order_by("-raised_at")
    )


def alerts_job(context: Any) -> None:
    """The ops-alerts job: evaluate, record the counts, fail the run when a connector's thresholds are unreadable."""
    from healthsync.jobs import JobFailed

    result = alerts_evaluate()
    for name in ("raised", "cleared", "open"):
        context.set(name, result[name])
    context.log(f"{result['raised']} raised, {result['cleared']} cleared, {result['open']} open")
    if result["bad_config"]:
        for code, error in result["bad_config"].items():
            context.log(f"{code}: {error}")
        raise JobFailed(f"alert thresholds unreadable on: {', '.join(sorted(result['bad_config']))}")
