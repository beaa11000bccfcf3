"""KPI reads for the dashboards: aggregates only, bounded to a recent window so the queries stay cheap.

Durations come from workflow steps: a run's "discharged" step and its "claim_submitted" step carry the
business times (PV1-45 discharge time; the time the claim went to the payer).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Sum
from django.utils import timezone

from healthsync.choices import ExceptionKind, RunStatus
from healthsync.models import ExceptionItem
from workflows.models import WorkflowRun, WorkflowStep

WINDOW_DAYS = 90
DISCHARGED = "discharged"
CLAIM_SUBMITTED = "claim_submitted"
INPATIENT = "I"


@dataclass(frozen=True)
class RunDuration:
    """One billed run: when it was discharged and how long until its claim was submitted."""

    run_id: int
    patient_class: str
    discharged_at: datetime
    submitted_at: datetime

    @property
    def hours(self) -> float:
        return (self.submitted_at - self.discharged_at).total_seconds() / 3600


@dataclass(frozen=True)
class DurationStats:
    """Median and p90 of a set of durations, in hours (days derived)."""

    count: int
    median_hours: float | None
    p90_hours: float | None

    @property
    def median_days(self) -> float | None:
        return None if self.median_hours is None else self.median_hours / 24

    @property
    def p90_days(self) -> float | None:
        return None if self.p90_hours is None else self.p90_hours / 24


@dataclass(frozen=True)
class ExceptionKindRow:
    kind: str
    label: str
    count: int
    amount: Decimal


@dataclass(frozen=True)
class WeeklyPoint:
    """Runs discharged in one ISO week (starting Monday) that have been billed, and their median in days."""

    week_start: date
    billed: int
    median_days: float


@dataclass(frozen=True)
class Kpis:
    """Everything the KPI tiles show."""

    since: datetime
    discharge_to_bill: DurationStats
    claim_lag: DurationStats
    runs_discharged: int
    runs_billed: int
    runs_blocked: int
    dnfb_amount: Decimal
    open_exceptions: list[ExceptionKindRow]

    @property
    def open_exception_count(self) -> int:
        return sum(row.count for row in self.open_exceptions)

    @property
    def money_at_risk(self) -> Decimal:
        return sum((row.amount for row in self.open_exceptions), Decimal("0"))


def percentile(values: list[float], pct: float) -> float | None:
    """The pct-th percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def duration_stats(hours: list[float]) -> DurationStats:
    return DurationStats(
        count=len(hours), median_hours=percentile(hours, 50), p90_hours=percentile(hours, 90)
    )


def window_start(now: datetime | None = None, days: int = WINDOW_DAYS) -> datetime:
    return (now or timezone.now()) - timedelta(days=days)


def billed_durations(since: datetime) -> list[RunDuration]:
    """Runs discharged since `since` that reached claim submission; at most one row per run."""
    discharged = dict(
        WorkflowStep.objects.filter(step=DISCHARGED, occurred_at__gte=since).values_list(
            "run_id", "occurred_at"
        )
    )
    if not discharged:
        return []
    discharged_in_window = WorkflowStep.objects.filter(step=DISCHARGED, occurred_at__gte=since)
    rows = WorkflowStep.objects.filter(
        step=CLAIM_SUBMITTED, run_id__in=discharged_in_window.values("run_id")
    ).values_list("run_id", "occurred_at", "run__patient_class")
    durations = []
    for run_id, submitted_at, patient_class in rows:
        discharged_at = discharged.get(run_id)
        # A claim stamped before the discharge is a data error upstream; it must not drag the median down.
        if discharged_at is None or submitted_at < discharged_at:
            continue
        durations.append(RunDuration(run_id, patient_class, discharged_at, submitted_at))
    return sorted(durations, key=lambda d: d.discharged_at)


def open_exceptions_by_kind() -> list[ExceptionKindRow]:
    rows = (
        ExceptionItem.objects.open()
        .values("kind")
        .annotate(count=Count("id"), amount=Sum("amount"))
        .order_by("kind")
    )
    labels = dict(ExceptionKind.choices)
    return [
        ExceptionKindRow(
            kind=row["kind"],
            label=labels.get(row["kind"], row["kind"]),
            count=row["count"],
            amount=row["amount"] or Decimal("0"),
        )
        for row in rows
    ]


def kpis(now: datetime | None = None, durations: list[RunDuration] | None = None) -> Kpis:
    """The tile numbers over the window ending `now`; pass `durations` when the caller already read them."""
    since = window_start(now)
    if durations is None:
        durations = billed_durations(since)
    discharged_runs = WorkflowRun.objects.filter(steps__step=DISCHARGED, steps__occurred_at__gte=since)
    unbilled = discharged_runs.exclude(steps__step=CLAIM_SUBMITTED)
    # DNFB: gross charges on accounts discharged but not final-billed; a cancelled run has left DNFB.
    dnfb = unbilled.exclude(status=RunStatus.CANCELLED).aggregate(total=Sum("amount"))["total"]
    return Kpis(
        since=since,
        discharge_to_bill=duration_stats([d.hours for d in durations]),
        claim_lag=duration_stats([d.hours for d in durations if d.patient_class == INPATIENT]),
        runs_discharged=discharged_runs.count(),
        runs_billed=discharged_runs.filter(steps__step=CLAIM_SUBMITTED).count(),
        runs_blocked=discharged_runs.filter(status=RunStatus.BLOCKED).count(),
        dnfb_amount=dnfb or Decimal("0"),
        open_exceptions=open_exceptions_by_kind(),
    )


def weekly_trend(durations: list[RunDuration]) -> list[WeeklyPoint]:
    """Group billed runs by the week of their discharge; weeks without a billed run are left out."""
    weeks: dict[date, list[float]] = defaultdict(list)
    for duration in durations:
        day = timezone.localtime(duration.discharged_at).date()
        weeks[day - timedelta(days=day.weekday())].append(duration.hours / 24)
    return [
        WeeklyPoint(week_start=week, billed=len(days), median_days=percentile(days, 50) or 0.0)
        for week, days in sorted(weeks.items())
    ]
