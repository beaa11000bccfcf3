"""KPI reads for the dashboards: aggregates only, bounded to a date window so the queries stay cheap.

Durations come from workflow steps: a run's "discharged" step and its "claim_submitted" step carry the
business times (PV1-45 discharge time; the time the claim went to the payer). Every figure honours the same
`Filters` (facility, patient class, date window); account figures select runs by discharge time, the
exception backlog by when the exception was raised, SLA compliance by when the run reached the step.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Aggregate, Count, F, FloatField, IntegerField, Q, QuerySet, Sum, Value
from django.db.models.functions import Floor, Least, TruncWeek
from django.utils import timezone

from dashboards import rollups
from dashboards.models import RunFact
from healthsync.choices import ExceptionKind, RunStatus
from healthsync.models import ExceptionItem
from workflows.definitions import WORKFLOWS
from workflows.models import WorkflowRun
from workflows.selectors import period_bounds

WINDOW_DAYS = 90
# ADGPSR is an average over the 90 days ending at the window's end, whatever range the user picked.
ADGPSR_DAYS = 90
# The longest range a user may ask for: keeps every query bounded.
MAX_RANGE_DAYS = 366
DTB = "discharge_to_bill"
P2P = "procure_to_pay"
REMITTANCE = "remittance"
LABOUR = "labour_allocation"
# Runs a page folds into the facts itself before reading; more than that is the worker's job.
CATCH_UP_LIMIT = 2000
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
    payer: str = ""

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
        if self.payer:
            runs = runs.filter(payer=self.payer)
        return runs

    def facts(self, workflow: str | None = DTB, *, windowed: bool = True) -> QuerySet[RunFact]:
        """Fact rows of `workflow` anchored in the window (discharge, PO approval...) with the facets applied."""
        facts = RunFact.objects.all()
        if workflow:
            facts = facts.filter(workflow=workflow)
        if windowed:
            facts = facts.filter(anchor_at__gte=self.start, anchor_at__lt=self.end)
        if self.facility:
            facts = facts.filter(facility=self.facility)
        if self.patient_class:
            facts = facts.filter(patient_class=self.patient_class)
        if self.payer:
            facts = facts.filter(payer=self.payer)
        return facts

    def exceptions(self) -> QuerySet[ExceptionItem]:
        # The backlog is every exception raised up to the window's end, however old: an exception open for
        # four months is exactly what the board must see. Open-only filtering is left to each figure.
        items = ExceptionItem.objects.filter(created_at__lt=self.end)
        if self.facility:
            items = items.filter(facility=self.facility)
        if self.patient_class or self.payer:
            # Exceptions carry no patient class or payer: take them from the account's discharge-to-bill run.
            keys = self.facts(windowed=False).values("business_key")
            items = items.filter(workflow=DTB, business_key__in=keys)
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
    coding_lag: DurationStats = field(default_factory=lambda: duration_stats([]))
    bill_hold: DurationStats = field(default_factory=lambda: duration_stats([]))
    gross_charges: Decimal = Decimal("0")
    late_charges: Decimal = Decimal("0")
    claims_submitted: int = 0
    claims_clean: int = 0
    claims_first_pass: int = 0
    po_cycle: DurationStats = field(default_factory=lambda: duration_stats([]))

    @property
    def late_charge_rate(self) -> float | None:
        return float(self.late_charges / self.gross_charges) if self.gross_charges else None

    @property
    def clean_claim_rate(self) -> float | None:
        return self.claims_clean / self.claims_submitted if self.claims_submitted else None

    @property
    def first_pass_yield(self) -> float | None:
        return self.claims_first_pass / self.claims_submitted if self.claims_submitted else None

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
    catch_up()
    rows = (
        filters.facts()
        .filter(dtb_hours__isnull=False)
        .order_by("anchor_at", "run_id")
        .values_list("run_id", "patient_class", "anchor_at", "dtb_hours")
    )
    return [
        RunDuration(run_id, patient_class, anchor, anchor + timedelta(hours=hours))
        for run_id, patient_class, anchor, hours in rows
    ]


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


class Percentile(Aggregate):
    """PostgreSQL's percentile_cont: linear interpolation between closest ranks, as `percentile()` computes."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


# Duration columns of a fact and the KPI each feeds.
DURATIONS = {
    "discharge_to_bill": "dtb_hours",
    "claim_lag": "claim_lag_hours",
    "coding_lag": "coding_hours",
    "bill_hold": "hold_hours",
    "payment_lag": "payment_lag_hours",
}


def catch_up(limit: int = CATCH_UP_LIMIT) -> None:
    """Fold the runs changed since the worker's last rollup pass into the facts (bounded: the worker does bulk)."""
    rollups.refresh(limit=limit)


def _duration_stats(facts: QuerySet[RunFact], columns: dict[str, str]) -> dict[str, DurationStats]:
    """Count, median and p90 of each duration column, in one query on PostgreSQL."""
    if connection.vendor == "postgresql":
        aggregates: dict[str, Any] = {}
        for name, column in columns.items():
            aggregates[f"{name}__n"] = Count(column)
            aggregates[f"{name}__p50"] = Percentile(column, 0.5)
            aggregates[f"{name}__p90"] = Percentile(column, 0.9)
        row = facts.aggregate(**aggregates)
        return {
            name: DurationStats(row[f"{name}__n"], row[f"{name}__p50"], row[f"{name}__p90"])
            for name in columns
        }
    # SQLite (the demo) has no percentile aggregate; its data is small enough to rank here.
    values: dict[str, list[float]] = {name: [] for name in columns}
    for row in facts.values_list(*columns.values()):
        for name, value in zip(columns, row, strict=True):
            if value is not None:
                values[name].append(value)
    return {name: duration_stats(values[name]) for name in columns}


def adgpsr(filters: Filters) -> Decimal:
    """Average daily gross charges: charges on accounts discharged in the 90 days before the window's end ÷ 90."""
    window = replace(filters, start=filters.end - timedelta(days=ADGPSR_DAYS))
    gross = window.facts().filter(cancelled=False).aggregate(total=Sum("amount"))["total"]
    return ((gross or Decimal("0")) / ADGPSR_DAYS).quantize(Decimal("0.01"))


def sla_compliance(filters: Filters, now: datetime | None = None) -> list[SlaRow]:
    """Per workflow: SLA-bound steps of runs anchored in the window that were left (for any later step) in time.

    A step not yet left counts as breached once its SLA has passed, and as pending before that.
    """
    now = now or timezone.now()
    catch_up()
    bound = [wf for wf in WORKFLOWS.values() if any(step.sla is not None for step in wf.steps)]
    rows = {
        row["workflow"]: row
        for row in filters.facts(None)
        .filter(workflow__in=[wf.code for wf in bound])
        .values("workflow")
        .annotate(
            met=Sum("sla_met"),
            breached=Sum("sla_breached"),
            overdue=Sum("sla_open", filter=Q(sla_open_deadline__lt=now)),
            pending=Sum("sla_open", filter=Q(sla_open_deadline__gte=now)),
        )
        .order_by()
    }
    out = []
    for wf in bound:
        row = rows.get(wf.code, {})
        breached = (row.get("breached") or 0) + (row.get("overdue") or 0)
        out.append(SlaRow(wf.code, wf.label, row.get("met") or 0, breached, row.get("pending") or 0))
    return out


def kpis(
    now: datetime | None = None,
    durations: list[RunDuration] | None = None,
    filters: Filters | None = None,
) -> Kpis:
    """The tile numbers for `filters` (default: the 90 days ending `now`), from the rollup facts.

    `durations` is accepted for callers that already read them; the figures come from the facts either way.
    """
    now = now or timezone.now()
    filters = filters or Filters.default(now)
    catch_up()
    facts = filters.facts()
    live = Q(cancelled=False)
    totals = facts.aggregate(
        discharged=Count("run_id"),
        billed=Count("run_id", filter=Q(done_at__isnull=False)),
        blocked=Count("run_id", filter=Q(status=RunStatus.BLOCKED)),
        # DNFB: gross charges on accounts discharged but not final-billed; a cancelled run has left DNFB.
        dnfb=Sum("amount", filter=live & Q(done_at__isnull=True)),
        gross=Sum("amount", filter=live),
        late=Sum("late_amount", filter=live),
        remitted=Count("run_id", filter=Q(remitted=True)),
        denied=Count("run_id", filter=Q(denied_first=True)),
        clean=Count("run_id", filter=Q(clean=True)),
        first_pass=Count("run_id", filter=Q(first_pass=True)),
    )
    stats = _duration_stats(facts, DURATIONS)
    po = _duration_stats(filters.facts(P2P), {"po_cycle": "cycle_hours"})["po_cycle"]
    return Kpis(
        since=filters.start,
        until=filters.end,
        discharge_to_bill=stats["discharge_to_bill"],
        claim_lag=stats["claim_lag"],
        runs_discharged=totals["discharged"],
        runs_billed=totals["billed"],
        runs_blocked=totals["blocked"],
        dnfb_amount=totals["dnfb"] or Decimal("0"),
        open_exceptions=open_exceptions_by_kind(filters),
        adgpsr=adgpsr(filters),
        payment_lag=stats["payment_lag"],
        claims_remitted=totals["remitted"],
        claims_denied=totals["denied"],
        backlog=backlog_by_age(filters, now),
        sla=sla_compliance(filters, now),
        coding_lag=stats["coding_lag"],
        bill_hold=stats["bill_hold"],
        gross_charges=totals["gross"] or Decimal("0"),
        late_charges=totals["late"] or Decimal("0"),
        claims_submitted=totals["billed"],
        claims_clean=totals["clean"],
        claims_first_pass=totals["first_pass"],
        po_cycle=po,
    )


def weekly_points(filters: Filters) -> list[WeeklyPoint]:
    """Billed accounts per discharge week and their median days to bill, grouped in the database."""
    billed = filters.facts().filter(dtb_hours__isnull=False)
    if connection.vendor != "postgresql":
        return weekly_trend(billed_durations(filters))
    rows = (
        billed.annotate(week=TruncWeek("anchor_at"))
        .values("week")
        .annotate(billed=Count("run_id"), median=Percentile("dtb_hours", 0.5))
        .order_by("week")
    )
    return [
        WeeklyPoint(
            week_start=timezone.localtime(row["week"]).date(),
            billed=row["billed"],
            median_days=row["median"] / 24,
        )
        for row in rows
    ]


@dataclass(frozen=True)
class Bin:
    """Billed accounts whose days to bill fall in [low, low + width)."""

    low_days: float
    count: int


def distribution(filters: Filters, width_days: float = 0.5, cap_days: float = 30) -> list[Bin]:
    """Days-to-bill histogram counted in the database (the page never ships one number per account)."""
    width_hours = width_days * 24
    cap = int(cap_days / width_days)
    rows = (
        filters.facts()
        .filter(dtb_hours__isnull=False)
        .annotate(bucket=Least(Floor(F("dtb_hours") / width_hours), Value(cap), output_field=IntegerField()))
        .values("bucket")
        .annotate(count=Count("run_id"))
        .order_by("bucket")
    )
    return [Bin(int(row["bucket"]) * width_days, row["count"]) for row in rows]


@dataclass
class PeriodReadiness:
    """What still blocks closing one month, for the accounts and POs the filters select."""

    period: str
    dnfb_count: int
    dnfb_amount: Decimal
    unposted_remits: int
    unmatched_invoices: int
    labour_posted: bool
    open_exceptions: int
    start: date
    end: date

    @property
    def ready(self) -> bool:
        return not (self.dnfb_count or self.unposted_remits or self.unmatched_invoices) and self.labour_posted


def periods(filters: Filters) -> list[str]:
    """The YYYY-MM months the window touches, oldest first."""
    first = timezone.localtime(filters.start).date().replace(day=1)
    last = timezone.localtime(filters.end - timedelta(microseconds=1)).date()
    out = []
    while first <= last:
        out.append(f"{first:%Y-%m}")
        first = (first + timedelta(days=32)).replace(day=1)
    return out


def close_readiness(filters: Filters) -> list[PeriodReadiness]:
    """Close readiness per month of the window, as workflows' close page judges one period, from the facts."""
    catch_up()
    out = []
    for period in periods(filters):
        start, end = period_bounds(period)
        month = replace(filters, start=start, end=end)
        dnfb = (
            month.facts()
            .filter(cancelled=False, done_at__isnull=True)
            .aggregate(n=Count("run_id"), amount=Sum("amount"))
        )
        remits = month.facts(REMITTANCE).exclude(status=RunStatus.COMPLETED).count()
        invoices = (
            month.facts(P2P, windowed=False)
            .filter(invoice_received_at__gte=start, invoice_received_at__lt=end, done_at__isnull=True)
            .count()
        )
        labour = RunFact.objects.filter(workflow=LABOUR, business_key=period, done_at__isnull=False).exists()
        exceptions = month.exceptions().open().filter(created_at__gte=start).count()
        out.append(
            PeriodReadiness(
                period=period,
                dnfb_count=dnfb["n"],
                dnfb_amount=dnfb["amount"] or Decimal("0"),
                unposted_remits=remits,
                unmatched_invoices=invoices,
                labour_posted=labour,
                open_exceptions=exceptions,
                start=start.date(),
                end=(end - timedelta(days=1)).date(),
            )
        )
    return out


def facilities() -> list[str]:
    """Facilities known from discharge-to-bill runs, for the filter's choices."""
    return _distinct("facility")


def payers() -> list[str]:
    """Payers known from discharge-to-bill runs, for the filter's choices."""
    return _distinct("payer")


def _distinct(column: str) -> list[str]:
    values = RunFact.objects.filter(workflow=DTB).exclude(**{column: ""}).values_list(column, flat=True)
    return list(values.order_by(column).distinct()[:500])


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
