"""KPI reads for the dashboards: aggregates only, bounded to a date window so the queries stay cheap.

Durations come from workflow steps: a run's "discharged" step and its "claim_submitted" step carry the
business times (PV1-45 discharge time; the time the claim went to the payer). Every figure honours the same
`Filters` (facility, patient class, date window); account figures select runs by discharge time, the
exception backlog by when the exception was raised, SLA compliance by when the run reached the step.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from healthsync.choices import ExceptionKind, RunStatus
from healthsync.models import ExceptionItem
from workflows.definitions import WORKFLOWS
from workflows.models import WorkflowRun, WorkflowStep

WINDOW_DAYS = 90
# ADGPSR is an average over the 90 days ending at the window's end, whatever range the user picked.
ADGPSR_DAYS = 90
# The longest range a user may ask for: keeps every query bounded.
MAX_RANGE_DAYS = 366
DTB = "discharge_to_bill"
DISCHARGED = "discharged"
CLAIM_SUBMITTED = "claim_submitted"
PAID = "paid"
DENIED = "denied"
INPATIENT = "I"
DAY = timedelta(days=1)
AGE_BANDS: tuple[tuple[str, timedelta, timedelta | None], ...] = (
    ("0-1d", timedelta(0), DAY),
    ("1-3d", DAY, 3 * DAY),
    ("3-7d", 3 * DAY, 7 * DAY),
    (">7d", 7 * DAY, None),
)


@dataclass(frozen=True)
class Filters:
    """What the user narrowed the dashboard to: a half-open time window [start, end) plus optional facets."""

    start: datetime
    end: datetime
    facility: str = ""
    patient_class: str = ""

    @classmethod
    def default(cls, now: datetime | None = None) -> Filters:
        end = now or timezone.now()
        return cls(start=end - timedelta(days=WINDOW_DAYS), end=end)

    def runs(self, workflow: str | None = DTB) -> QuerySet[WorkflowRun]:
        runs = WorkflowRun.objects.all()
        if workflow:
            runs = runs.filter(workflow=workflow)
        if self.facility:
            runs = runs.filter(facility=self.facility)
        if self.patient_class:
            runs = runs.filter(patient_class=self.patient_class)
        return runs

    def discharged_steps(self) -> QuerySet[WorkflowStep]:
        return WorkflowStep.objects.filter(
            step=DISCHARGED,
            occurred_at__gte=self.start,
            occurred_at__lt=self.end,
            run__in=self.runs(),
        )

    def exceptions(self) -> QuerySet[ExceptionItem]:
        # The backlog is every exception raised up to the window's end, however old: an exception open for
        # four months is exactly what the board must see. Open-only filtering is left to each figure.
        items = ExceptionItem.objects.filter(created_at__lt=self.end)
        if self.facility:
            items = items.filter(facility=self.facility)
        if self.patient_class:
            # Exceptions carry no patient class: take it from the discharge-to-bill run of the same account.
            items = items.filter(workflow=DTB, business_key__in=self.runs().values("business_key"))
        return items


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
class AgeBandRow:
    """Open exceptions whose age falls in one band, and the money they hold up."""

    band: str
    count: int
    amount: Decimal


@dataclass(frozen=True)
class SlaRow:
    """How often a workflow's runs left SLA-bound steps in time: met, breached, and still within the SLA."""

    workflow: str
    label: str
    met: int
    breached: int
    pending: int

    @property
    def compliance(self) -> float | None:
        judged = self.met + self.breached
        return self.met / judged if judged else None


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
    until: datetime | None = None
    adgpsr: Decimal = Decimal("0")
    payment_lag: DurationStats = field(default_factory=lambda: duration_stats([]))
    claims_remitted: int = 0
    claims_denied: int = 0
    backlog: list[AgeBandRow] = field(default_factory=list)
    sla: list[SlaRow] = field(default_factory=list)

    @property
    def dnfb_days(self) -> Decimal | None:
        """DNFB $ ÷ ADGPSR; None when nothing was charged in the 90 days (the ratio means nothing then)."""
        if not self.adgpsr:
            return None
        return (self.dnfb_amount / self.adgpsr).quantize(Decimal("0.01"))

    @property
    def denial_rate(self) -> float | None:
        return self.claims_denied / self.claims_remitted if self.claims_remitted else None

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


def billed_durations(since: datetime | Filters) -> list[RunDuration]:
    """Runs discharged in the window that reached claim submission; at most one row per run.

    A bare datetime means "discharged since then, any facility or class" (the API's 90-day window).
    """
    filters = since if isinstance(since, Filters) else Filters(start=since, end=timezone.now() + DAY * 3650)
    discharged = dict(filters.discharged_steps().values_list("run_id", "occurred_at"))
    if not discharged:
        return []
    rows = WorkflowStep.objects.filter(
        step=CLAIM_SUBMITTED, run_id__in=filters.discharged_steps().values("run_id")
    ).values_list("run_id", "occurred_at", "run__patient_class")
    durations = []
    for run_id, submitted_at, patient_class in rows:
        discharged_at = discharged.get(run_id)
        # A claim stamped before the discharge is a data error upstream; it must not drag the median down.
        if discharged_at is None or submitted_at < discharged_at:
            continue
        durations.append(RunDuration(run_id, patient_class, discharged_at, submitted_at))
    return sorted(durations, key=lambda d: d.discharged_at)


def open_exceptions_by_kind(filters: Filters | None = None) -> list[ExceptionKindRow]:
    items = filters.exceptions() if filters else ExceptionItem.objects.all()
    rows = items.open().values("kind").annotate(count=Count("id"), amount=Sum("amount")).order_by("kind")
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


def backlog_by_age(filters: Filters, now: datetime | None = None) -> list[AgeBandRow]:
    """Open exceptions per age band (age = now - raised), with the money each band holds up."""
    now = now or timezone.now()
    open_items = filters.exceptions().open()
    out = []
    for band, younger, older in AGE_BANDS:
        items = open_items.filter(created_at__lte=now - younger)
        if older is not None:
            items = items.filter(created_at__gt=now - older)
        totals = items.aggregate(count=Count("id"), amount=Sum("amount"))
        out.append(AgeBandRow(band, totals["count"], totals["amount"] or Decimal("0")))
    return out


def adgpsr(filters: Filters) -> Decimal:
    """Average daily gross charges: charges on accounts discharged in the 90 days before the window's end ÷ 90."""
    window = Filters(
        start=filters.end - timedelta(days=ADGPSR_DAYS),
        end=filters.end,
        facility=filters.facility,
        patient_class=filters.patient_class,
    )
    gross = (
        WorkflowRun.objects.filter(id__in=window.discharged_steps().values("run_id"))
        .exclude(status=RunStatus.CANCELLED)
        .aggregate(total=Sum("amount"))["total"]
    )
    return ((gross or Decimal("0")) / ADGPSR_DAYS).quantize(Decimal("0.01"))


def _step_times(run_ids: QuerySet, steps: list[str]) -> dict[int, dict[str, datetime]]:
    times: dict[int, dict[str, datetime]] = defaultdict(dict)
    rows = WorkflowStep.objects.filter(run_id__in=run_ids, step__in=steps).values_list(
        "run_id", "step", "occurred_at"
    )
    for run_id, step, occurred_at in rows:
        times[run_id][step] = occurred_at
    return times


def payment_lag_and_denials(filters: Filters) -> tuple[DurationStats, int, int]:
    """Payment lag (claim submitted → paid) and the first-remit denial counts, for runs discharged in the window.

    A claim is remitted when it was paid or denied; it counts as denied when the denial came first (or alone).
    """
    times = _step_times(filters.discharged_steps().values("run_id"), [CLAIM_SUBMITTED, PAID, DENIED])
    lags, remitted, denied = [], 0, 0
    for steps in times.values():
        submitted, paid, denial = steps.get(CLAIM_SUBMITTED), steps.get(PAID), steps.get(DENIED)
        if submitted and paid and paid >= submitted:
            lags.append((paid - submitted).total_seconds() / 3600)
        if paid or denial:
            remitted += 1
            if denial and (paid is None or denial <= paid):
                denied += 1
    return duration_stats(lags), remitted, denied


def sla_compliance(filters: Filters, now: datetime | None = None) -> list[SlaRow]:
    """Per workflow: SLA-bound steps reached in the window that the run left (for any later step) within the SLA.

    A step not yet left counts as breached once its SLA has passed, and as pending before that.
    """
    now = now or timezone.now()
    out = []
    for workflow in WORKFLOWS.values():
        bound = {step.name: step for step in workflow.steps if step.sla is not None}
        if not bound:
            continue
        runs = filters.runs(workflow.code)
        in_window = WorkflowStep.objects.filter(
            run__in=runs, step__in=list(bound), occurred_at__gte=filters.start, occurred_at__lt=filters.end
        )
        times = _step_times(in_window.values("run_id"), workflow.step_names)
        met = breached = pending = 0
        for run_id, name, reached in in_window.values_list("run_id", "step", "occurred_at"):
            step = bound[name]
            # The run leaves a step when it reaches any other step (as workflows.sla sees it), declared or not.
            following = [t for n, t in times[run_id].items() if n != name and t >= reached]
            left = min(following, default=None)
            if left is not None:
                met, breached = (met + 1, breached) if left - reached <= step.sla else (met, breached + 1)
            elif now - reached > step.sla:
                breached += 1
            else:
                pending += 1
        out.append(SlaRow(workflow.code, workflow.label, met, breached, pending))
    return out


def kpis(
    now: datetime | None = None,
    durations: list[RunDuration] | None = None,
    filters: Filters | None = None,
) -> Kpis:
    """The tile numbers for `filters` (default: the 90 days ending `now`); pass `durations` if already read."""
    now = now or timezone.now()
    filters = filters or Filters.default(now)
    if durations is None:
        durations = billed_durations(filters)
    discharged_runs = WorkflowRun.objects.filter(id__in=filters.discharged_steps().values("run_id"))
    billed_runs = discharged_runs.filter(steps__step=CLAIM_SUBMITTED)
    unbilled = discharged_runs.exclude(steps__step=CLAIM_SUBMITTED)
    # DNFB: gross charges on accounts discharged but not final-billed; a cancelled run has left DNFB.
    dnfb = unbilled.exclude(status=RunStatus.CANCELLED).aggregate(total=Sum("amount"))["total"]
    payment_lag, remitted, denied = payment_lag_and_denials(filters)
    return Kpis(
        since=filters.start,
        until=filters.end,
        discharge_to_bill=duration_stats([d.hours for d in durations]),
        claim_lag=duration_stats([d.hours for d in durations if d.patient_class == INPATIENT]),
        runs_discharged=discharged_runs.count(),
        runs_billed=billed_runs.count(),
        runs_blocked=discharged_runs.filter(status=RunStatus.BLOCKED).count(),
        dnfb_amount=dnfb or Decimal("0"),
        open_exceptions=open_exceptions_by_kind(filters),
        adgpsr=adgpsr(filters),
        payment_lag=payment_lag,
        claims_remitted=remitted,
        claims_denied=denied,
        backlog=backlog_by_age(filters, now),
        sla=sla_compliance(filters, now),
    )


def export_rows(filters: Filters, *, with_phi: bool) -> list[list[str]]:
    """The accounts behind the discharge-to-bill figure, one CSV row each (header first).

    Without PHI access only ids and business times leave the building; names and MRNs never do.
    """
    header = [
        "run_id",
        "encounter",
        "account",
        "facility",
        "patient_class",
        "discharged_at",
        "claim_submitted_at",
    ]
    header.append("days_to_bill")
    if with_phi:
        header += ["patient_mrn", "payer"]
    durations = billed_durations(filters)
    runs = WorkflowRun.objects.in_bulk([d.run_id for d in durations])
    rows = [header]
    for d in durations:
        run = runs[d.run_id]
        context = run.context if isinstance(run.context, dict) else {}
        row = [
            str(run.pk),
            run.business_key,
            str(context.get("account_number") or ""),
            run.facility,
            run.patient_class,
            d.discharged_at.isoformat(),
            d.submitted_at.isoformat(),
            f"{d.hours / 24:.2f}",
        ]
        if with_phi:
            row += [str((context.get("patient") or {}).get("mrn") or ""), run.payer]
        rows.append(row)
    return rows


def facilities() -> list[str]:
    """Facilities known from discharge-to-bill runs, for the filter's choices."""
    return list(
        WorkflowRun.objects.filter(workflow=DTB)
        .exclude(facility="")
        .order_by("facility")
        .values_list("facility", flat=True)
        .distinct()
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
