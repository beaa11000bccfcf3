"""KPI reads for the dashboards: aggregates only, bounded to a date window so the queries stay cheap.

Durations come from workflow steps: a run's "discharged" step and its "claim_submitted" step carry the
business times (PV1-45 discharge time; the time the claim went to the payer). Every figure honours the same
`Filters` (facility, patient class, date window); account figures select runs by discharge time, the
exception backlog by when the exception was raised, SLA compliance by when the run reached the step.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.contrib.postgres.aggregates import ArrayAgg
from django.db import connection
from django.db.models import CharField, Count, F, IntegerField, Q, QuerySet, Sum, Value
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast, Floor, TruncDate
from django.utils import timezone

from dashboards import rollups
from dashboards.models import KpiDay, RunFact
from dashboards.tally import COUNTS, HOURS, SUMS, Tally, histogram_percentile
from healthsync.choices import ExceptionKind, RunStatus
from healthsync.models import ExceptionItem
from workflows.definitions import WORKFLOWS
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
    # The daily tallies behind the figures, for the charts of the same page.
    days: dict[date, Tally] = field(default_factory=dict, repr=False)

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
    # One round trip: a count and a sum per band as conditional aggregates over the open backlog.
    aggregates: dict[str, Count | Sum] = {}
    for index, (_band, younger, older) in enumerate(AGE_BANDS):
        in_band = Q(created_at__lte=now - younger)
        if older is not None:
            in_band &= Q(created_at__gt=now - older)
        aggregates[f"count{index}"] = Count("id", filter=in_band)
        aggregates[f"amount{index}"] = Sum("amount", filter=in_band)
    totals = filters.exceptions().open().aggregate(**aggregates)
    return [
        AgeBandRow(band, totals[f"count{index}"], totals[f"amount{index}"] or Decimal("0"))
        for index, (band, _younger, _older) in enumerate(AGE_BANDS)
    ]


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


def _tallies_in_sql(facts: QuerySet[RunFact], hours: tuple[str, ...]) -> dict[tuple[str, date], Tally]:
    """Per (workflow, anchor day), the tally of `facts` counted by the database, for the hour columns asked for.

    Three round trips whatever the number of workflows and days: the counts and sums, one UNION ALL of a
    GROUP BY per hour column, and the open SLA steps by deadline.
    """
    keyed = facts.exclude(anchor_at=None).annotate(
        day=TruncDate("anchor_at", tzinfo=timezone.get_current_timezone())
    )
    live = Q(cancelled=False)
    rows = (
        keyed.values("workflow", "day")
        .annotate(
            runs=Count("run_id"),
            done=Count("run_id", filter=Q(done_at__isnull=False)),
            blocked=Count("run_id", filter=Q(status=RunStatus.BLOCKED)),
            not_completed=Count("run_id", filter=~Q(status=RunStatus.COMPLETED)),
            remitted=Count("run_id", filter=Q(remitted=True)),
            denied=Count("run_id", filter=Q(denied_first=True)),
            clean=Count("run_id", filter=Q(clean=True)),
            first_pass=Count("run_id", filter=Q(first_pass=True)),
            sla_met=Sum("sla_met"),
            sla_breached=Sum("sla_breached"),
            dnfb_count=Count("run_id", filter=live & Q(done_at__isnull=True)),
            gross=Sum("amount", filter=live),
            late=Sum("late_amount", filter=live),
            dnfb=Sum("amount", filter=live & Q(done_at__isnull=True)),
        )
        .order_by()
    )
    out: dict[tuple[str, date], Tally] = defaultdict(Tally)
    for row in rows:
        tally = out[row["workflow"], row["day"]]
        tally.counts.update({name: row[name] or 0 for name in COUNTS})
        for name in SUMS:
            tally.sums[name] += row[name] or Decimal("0")
    if not out:
        return out
    if hours and connection.vendor == "postgresql":
        # One scan for every histogram: the rounded hours of each (workflow, day) as an array per column,
        # counted here. A UNION of one GROUP BY per column would read the same rows once per column.
        arrays = {
            column: ArrayAgg(
                Cast(Floor(F(column) + 0.5), IntegerField()),
                filter=Q(**{f"{column}__isnull": False}),
                default=[],
            )
            for column in hours
        }
        for row in keyed.values("workflow", "day").annotate(**arrays).order_by():
            tally = out[row["workflow"], row["day"]]
            for column in hours:
                tally.hours[column].update(Counter(row[column]))
    elif hours:
        parts = [
            keyed.filter(**{f"{column}__isnull": False})
            .annotate(column=Value(column, output_field=CharField()), h=Floor(F(column) + 0.5))
            .values("workflow", "day", "column", "h")
            .annotate(n=Count("run_id"))
            .order_by()
            for column in hours
        ]
        union = parts[0].union(*parts[1:], all=True) if len(parts) > 1 else parts[0]
        for workflow, day, column, h, n in union.values_list("workflow", "day", "column", "h", "n"):
            out[workflow, day].hours[column][int(h)] += n
    due = (
        keyed.filter(sla_open__gt=0, sla_open_deadline__isnull=False)
        .values("workflow", "day", "sla_open_deadline")
        .annotate(n=Sum("sla_open"))
        .order_by()
    )
    for b in due:
        out[b["workflow"], b["day"]].open_due[int(b["sla_open_deadline"].timestamp() // 60)] += b["n"]
    return out


def workflow_day_tallies(
    filters: Filters, workflows: tuple[str, ...], hours: tuple[str, ...] = HOURS
) -> dict[str, dict[date, Tally]]:
    """Per workflow and anchor day, the tally of the facts the filters select: a handful of round trips in all.

    Whole days come from the daily rollup (overall, or the one facet asked for), every workflow in one query;
    the partial first and last day are counted by the database, and any combination of two or more facets is
    tallied by day in SQL from its (few) facts. Only the hour histograms named in `hours` are filled for the
    days counted from facts; with no `hours` the rollups' histograms are skipped too (nobody reads them).
    """
    out: dict[str, dict[date, Tally]] = {workflow: defaultdict(Tally) for workflow in workflows}
    facets = [(dim, getattr(filters, dim)) for dim in rollups.DIMS if getattr(filters, dim)]
    first = rollups.local_day(filters.start)
    if rollups.day_bounds(first)[0] < filters.start:
        first += DAY
    last = rollups.local_day(filters.end)
    live: Q | None = None
    if len(facets) > 1 or first >= last:
        live = Q(anchor_at__gte=filters.start, anchor_at__lt=filters.end)
    else:
        dim, value = facets[0] if facets else ("", "")
        rows = KpiDay.objects.filter(
            workflow__in=workflows, dim=dim, value=value, day__gte=first, day__lt=last
        )
        fields = ("c", "s", "h", "o") if hours else ("c", "s", "o")
        parts = {key: KeyTransform(key, "data") for key in fields}
        for row in rows.values("workflow", "day", **parts).order_by():
            out[row["workflow"]][row["day"]].merge_json({key: row[key] or {} for key in fields})
        head_end, tail_start = rollups.day_bounds(first)[0], rollups.day_bounds(last)[0]
        if filters.start < head_end:
            live = Q(anchor_at__gte=filters.start, anchor_at__lt=head_end)
        if tail_start < filters.end:
            tail = Q(anchor_at__gte=tail_start, anchor_at__lt=filters.end)
            live = tail if live is None else live | tail
    if live is not None:
        facts = filters.facts(None, windowed=False).filter(live, workflow__in=workflows)
        for (workflow, day), tally in _tallies_in_sql(facts, hours).items():
            out[workflow][day].merge(tally)
    return out


def day_tallies(filters: Filters, workflow: str, hours: tuple[str, ...] = HOURS) -> dict[date, Tally]:
    """Per anchor day, the tally of `workflow`'s facts the filters select (see `workflow_day_tallies`)."""
    return workflow_day_tallies(filters, (workflow,), hours)[workflow]


def merged(tallies: dict[date, Tally]) -> Tally:
    total = Tally()
    for tally in tallies.values():
        total.merge(tally)
    return total


def _stats(tally: Tally, column: str) -> DurationStats:
    histogram = tally.hours[column]
    return DurationStats(
        sum(histogram.values()), histogram_percentile(histogram, 50), histogram_percentile(histogram, 90)
    )


def adgpsr(filters: Filters, days: dict[date, Tally] | None = None) -> Decimal:
    """Average daily gross charges: charges on accounts discharged in the 90 days before the window's end ÷ 90.

    `days` are the window's own tallies, reused when the window is those 90 days (the default).
    """
    window = replace(filters, start=filters.end - timedelta(days=ADGPSR_DAYS))
    if days is None or window != filters:
        days = day_tallies(window, DTB, hours=())
    gross = merged(days).sums["gross"]
    return (gross / ADGPSR_DAYS).quantize(Decimal("0.01"))


def sla_workflows() -> tuple[str, ...]:
    """The workflows with at least one SLA-bound step."""
    return tuple(wf.code for wf in WORKFLOWS.values() if any(step.sla is not None for step in wf.steps))


def sla_compliance(
    filters: Filters, now: datetime | None = None, known: dict[str, Tally] | None = None
) -> list[SlaRow]:
    """Per workflow: SLA-bound steps of runs anchored in the window that were left (for any later step) in time.

    A step not yet left counts as breached once its SLA has passed, and as pending before that. `known` are
    workflows' window totals the caller already holds; the others are read together in one go.
    """
    now = now or timezone.now()
    catch_up()
    totals = dict(known or {})
    codes = sla_workflows()
    missing = tuple(code for code in codes if code not in totals)
    if missing:
        read = workflow_day_tallies(filters, missing, hours=())
        totals.update({code: merged(days) for code, days in read.items()})
    out = []
    for code in codes:
        tally = totals[code]
        overdue, pending = tally.overdue(now)
        met, breached = tally.counts["sla_met"], tally.counts["sla_breached"] + overdue
        out.append(SlaRow(code, WORKFLOWS[code].label, met, breached, pending))
    return out


def kpis(
    now: datetime | None = None,
    durations: list[RunDuration] | None = None,
    filters: Filters | None = None,
) -> Kpis:
    """The tile numbers for `filters` (default: the 90 days ending `now`), from the daily rollups.

    `durations` is accepted for callers that already read them; the figures come from the rollups either way.
    """
    now = now or timezone.now()
    filters = filters or Filters.default(now)
    catch_up()
    # Every workflow the tiles read, in one pass: the histograms of discharge-to-bill and procure-to-pay.
    read = workflow_day_tallies(
        filters,
        tuple(dict.fromkeys((DTB, P2P, *sla_workflows()))),
        hours=(*DURATIONS.values(), "cycle_hours"),
    )
    totals = {code: merged(days) for code, days in read.items()}
    days, total = read[DTB], totals[DTB]
    counts, sums = total.counts, total.sums
    return Kpis(
        since=filters.start,
        until=filters.end,
        discharge_to_bill=_stats(total, "dtb_hours"),
        claim_lag=_stats(total, "claim_lag_hours"),
        runs_discharged=counts["runs"],
        runs_billed=counts["done"],
        runs_blocked=counts["blocked"],
        dnfb_amount=sums["dnfb"],
        open_exceptions=open_exceptions_by_kind(filters),
        adgpsr=adgpsr(filters, days),
        payment_lag=_stats(total, "payment_lag_hours"),
        claims_remitted=counts["remitted"],
        claims_denied=counts["denied"],
        backlog=backlog_by_age(filters, now),
        sla=sla_compliance(filters, now, totals),
        coding_lag=_stats(total, "coding_hours"),
        bill_hold=_stats(total, "hold_hours"),
        gross_charges=sums["gross"],
        late_charges=sums["late"],
        claims_submitted=counts["done"],
        claims_clean=counts["clean"],
        claims_first_pass=counts["first_pass"],
        po_cycle=_stats(totals[P2P], "cycle_hours"),
        days=days,
    )


def weekly_points(filters: Filters, days: dict[date, Tally] | None = None) -> list[WeeklyPoint]:
    """Billed accounts per discharge week (Monday) and their median days to bill."""
    # Only the days-to-bill histogram is read: merging whole tallies per week would be wasted work.
    weeks: dict[date, Tally] = defaultdict(Tally)
    for day, tally in (day_tallies(filters, DTB) if days is None else days).items():
        weeks[day - timedelta(days=day.weekday())].hours["dtb_hours"].update(tally.hours["dtb_hours"])
    points = []
    for week, tally in sorted(weeks.items()):
        stats = _stats(tally, "dtb_hours")
        if stats.count:
            points.append(
                WeeklyPoint(week_start=week, billed=stats.count, median_days=stats.median_days or 0.0)
            )
    return points


@dataclass(frozen=True)
class Bin:
    """Billed accounts whose days to bill fall in [low, low + width)."""

    low_days: float
    count: int


def distribution(
    filters: Filters, days: dict[date, Tally] | None = None, width_days: float = 0.5, cap_days: float = 30
) -> list[Bin]:
    """Days-to-bill histogram from the rollups (the page never ships one number per account)."""
    histogram: Counter[int] = Counter()
    for tally in (day_tallies(filters, DTB) if days is None else days).values():
        histogram.update(tally.hours["dtb_hours"])
    bins: Counter[int] = Counter()
    cap = int(cap_days / width_days)
    for hours, count in histogram.items():
        bins[min(int(hours // (width_days * 24)), cap)] += count
    return [Bin(bucket * width_days, count) for bucket, count in sorted(bins.items())]


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
    """Close readiness per month of the window, as workflows' close page judges one period, from the rollups."""
    catch_up()
    months = [(period, *period_bounds(period)) for period in periods(filters)]
    if not months:
        return []
    span = replace(filters, start=months[0][1], end=months[-1][2])
    by_month: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(Tally))
    for workflow, days in workflow_day_tallies(span, (DTB, REMITTANCE), hours=()).items():
        for day, tally in days.items():
            by_month[f"{day:%Y-%m}"][workflow].merge(tally)
    # One query per figure for all the months at once: a conditional count per month.
    invoices = (
        span.facts(P2P, windowed=False)
        .filter(invoice_received_at__gte=span.start, invoice_received_at__lt=span.end, done_at__isnull=True)
        .aggregate(
            **{
                f"m{index}": Count(
                    "run_id", filter=Q(invoice_received_at__gte=start, invoice_received_at__lt=end)
                )
                for index, (_period, start, end) in enumerate(months)
            }
        )
    )
    exceptions = (
        span.exceptions()
        .open()
        .filter(created_at__gte=span.start)
        .aggregate(
            **{
                f"m{index}": Count("id", filter=Q(created_at__gte=start, created_at__lt=end))
                for index, (_period, start, end) in enumerate(months)
            }
        )
    )
    posted = set(
        RunFact.objects.filter(
            workflow=LABOUR, business_key__in=[period for period, _, _ in months], done_at__isnull=False
        ).values_list("business_key", flat=True)
    )
    out = []
    for index, (period, start, end) in enumerate(months):
        dtb, remits = by_month[period][DTB], by_month[period][REMITTANCE]
        out.append(
            PeriodReadiness(
                period=period,
                dnfb_count=dtb.counts["dnfb_count"],
                dnfb_amount=dtb.sums["dnfb"],
                unposted_remits=remits.counts["not_completed"],
                unmatched_invoices=invoices[f"m{index}"],
                labour_posted=period in posted,
                open_exceptions=exceptions[f"m{index}"],
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


def _distinct(dim: str) -> list[str]:
    # The daily rollup holds one row per facet value and day: far fewer rows than the facts.
    values = KpiDay.objects.filter(workflow=DTB, dim=dim).values_list("value", flat=True)
    return list(values.order_by("value").distinct()[:500])


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
