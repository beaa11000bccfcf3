"""The rows behind every figure: one registry of tables, each read by the drill-down page and the CSV export.

A fact table lists the runs (accounts, purchase orders, remittances) behind a KPI; summary tables are the
dashboard's own tables (exceptions by kind, backlog by age, SLA, close readiness, weekly trend). PHI columns
(MRN, payer) are filled only for roles with `healthsync.view_phi`; the page masks them for everyone else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from dashboards import selectors
from dashboards.definitions import DEFINITIONS
from dashboards.models import RunFact
from dashboards.selectors import AGE_BANDS, DTB, P2P, REMITTANCE, Filters
from healthsync.models import ExceptionItem
from workflows.definitions import WORKFLOWS

PHI_HEADERS = ["patient_mrn", "payer"]
# The business key and milestones each workflow's rows are labelled with.
KEY_HEADER = {DTB: "encounter", P2P: "purchase_order", REMITTANCE: "trace_number"}
ANCHOR_HEADER = {DTB: "discharged_at", P2P: "po_approved_at", REMITTANCE: "received_at"}
DONE_HEADER = {DTB: "claim_submitted_at", P2P: "invoice_posted_at", REMITTANCE: "posted_at"}


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def _days(hours: float | None) -> str:
    return "" if hours is None else f"{hours / 24:.2f}"


def _flag(value: bool) -> str:
    return "yes" if value else "no"


@dataclass(frozen=True)
class FactTable:
    """The runs behind one KPI: which workflow, which of its facts, the value shown and any extra columns."""

    key: str
    label: str
    definition: str
    workflow: str | None
    where: Q = field(default_factory=Q)
    value: str | None = None  # a duration column, shown in days
    value_header: str = ""
    extra: tuple[tuple[str, Callable[[RunFact], str]], ...] = ()
    window: str = "anchor_at"

    def queryset(self, filters: Filters) -> QuerySet[RunFact]:
        facts = filters.facts(self.workflow, windowed=self.window == "anchor_at")
        if self.window != "anchor_at":
            facts = facts.filter(**{f"{self.window}__gte": filters.start, f"{self.window}__lt": filters.end})
        return facts.filter(self.where).order_by(self.window, "run_id")

    def header(self, *, with_phi: bool) -> list[str]:
        workflow = self.workflow or ""
        header = ["run_id", KEY_HEADER.get(workflow, "business_key")]
        if workflow == DTB:
            header.append("account")
        header += ["facility", "patient_class"]
        header += [ANCHOR_HEADER.get(workflow, "started_at"), DONE_HEADER.get(workflow, "done_at")]
        if self.value:
            header.append(self.value_header)
        header += [name for name, _ in self.extra]
        return header + (PHI_HEADERS if with_phi else [])

    def row(self, fact: RunFact, *, with_phi: bool) -> list[str]:
        context = fact.run.context if isinstance(fact.run.context, dict) else {}
        row = [str(fact.run_id), fact.business_key]
        if fact.workflow == DTB:
            row.append(str(context.get("account_number") or ""))
        row += [fact.facility, fact.patient_class, _iso(fact.anchor_at), _iso(fact.done_at)]
        if self.value:
            row.append(_days(getattr(fact, self.value)))
        row += [get(fact) for _, get in self.extra]
        if with_phi:
            row += [str((context.get("patient") or {}).get("mrn") or ""), fact.run.payer]
        return row

    def rows(self, facts: Iterable[RunFact], *, with_phi: bool) -> Iterator[list[str]]:
        for fact in facts:
            yield self.row(fact, with_phi=with_phi)


def _amount(fact: RunFact) -> str:
    return f"{fact.amount:.2f}"


def _fact_tables() -> dict[str, FactTable]:
    def table(key: str, workflow: str | None, **kwargs: Any) -> FactTable:
        definition = DEFINITIONS.get(key)
        label = kwargs.pop("label", definition.label if definition else key.replace("_", " ").capitalize())
        text = kwargs.pop("definition", definition.text if definition else "")
        return FactTable(key, label, text, workflow, **kwargs)

    status = ("status", lambda f: f.status)
    amount = ("amount", _amount)
    tables = [
        table(
            "discharge_to_bill",
            DTB,
            where=Q(dtb_hours__isnull=False),
            value="dtb_hours",
            value_header="days_to_bill",
        ),
        table(
            "claim_lag",
            DTB,
            where=Q(claim_lag_hours__isnull=False),
            value="claim_lag_hours",
            value_header="claim_lag_days",
        ),
        table(
            "coding_lag",
            DTB,
            where=Q(coding_hours__isnull=False),
            value="coding_hours",
            value_header="coding_lag_days",
        ),
        table(
            "bill_hold",
            DTB,
            where=Q(hold_hours__isnull=False),
            value="hold_hours",
            value_header="bill_hold_days",
        ),
        table(
            "payment_lag",
            DTB,
            where=Q(payment_lag_hours__isnull=False),
            value="payment_lag_hours",
            value_header="payment_lag_days",
        ),
        table("runs_discharged", DTB, extra=(status, amount)),
        table("runs_billed", DTB, where=Q(done_at__isnull=False), extra=(status, amount)),
        table("runs_blocked", DTB, where=Q(status="blocked"), extra=(status, amount)),
        table("dnfb", DTB, where=Q(done_at__isnull=True, cancelled=False), extra=(status, amount)),
        table(
            "late_charges",
            DTB,
            where=Q(cancelled=False),
            extra=(amount, ("late_amount", lambda f: f"{f.late_amount:.2f}")),
        ),
        table(
            "clean_claims", DTB, where=Q(done_at__isnull=False), extra=(("clean", lambda f: _flag(f.clean)),)
        ),
        table(
            "first_pass",
            DTB,
            where=Q(done_at__isnull=False),
            extra=(("paid_first_pass", lambda f: _flag(f.first_pass)),),
        ),
        table(
            "denials", DTB, where=Q(remitted=True), extra=(("denied_first", lambda f: _flag(f.denied_first)),)
        ),
        table(
            "po_cycle",
            P2P,
            where=Q(cycle_hours__isnull=False),
            value="cycle_hours",
            value_header="cycle_days",
            extra=(amount,),
        ),
        table(
            "unposted_remits",
            REMITTANCE,
            label="Remittances not posted",
            definition="Remittances received in the window whose cash is not posted yet.",
            where=~Q(status="completed"),
            extra=(amount,),
        ),
        table(
            "unmatched_invoices",
            P2P,
            label="Invoices not posted",
            definition="Purchase orders with an invoice received in the window and not posted to the ERP yet.",
            where=Q(done_at__isnull=True),
            extra=(amount,),
            window="invoice_received_at",
        ),
    ]
    sla_extra = (
        ("sla_met", lambda f: str(f.sla_met)),
        ("sla_breached", lambda f: str(f.sla_breached)),
        ("sla_open", lambda f: str(f.sla_open)),
        ("sla_open_due", lambda f: _iso(f.sla_open_deadline)),
    )
    for wf in WORKFLOWS.values():
        if any(step.sla for step in wf.steps):
            tables.append(
                table(
                    f"sla_{wf.code}",
                    wf.code,
                    label=f"SLA: {wf.label}",
                    definition=DEFINITIONS["sla"].text,
                    where=Q(sla_met__gt=0) | Q(sla_breached__gt=0) | Q(sla_open__gt=0),
                    extra=sla_extra,
                )
            )
    return {t.key: t for t in tables}


FACT_TABLES = _fact_tables()

EXCEPTION_HEADER = [
    "exception_id",
    "kind",
    "status",
    "workflow",
    "business_key",
    "facility",
    "raised_at",
    "age_days",
    "amount",
]


def exceptions(filters: Filters, band: str = "", now: datetime | None = None) -> QuerySet[ExceptionItem]:
    """Open exceptions behind the backlog (all of them, or one age band), oldest first."""
    now = now or timezone.now()
    items = filters.exceptions().open()
    for name, younger, older in AGE_BANDS:
        if name == band:
            items = items.filter(created_at__lte=now - younger)
            if older is not None:
                items = items.filter(created_at__gt=now - older)
    return items.order_by("created_at", "id")


def exception_rows(items: Iterable[ExceptionItem], now: datetime) -> Iterator[list[str]]:
    for item in items:
        yield [
            str(item.pk),
            item.kind,
            item.status,
            item.workflow,
            item.business_key,
            item.facility,
            _iso(item.created_at),
            f"{(now - item.created_at).total_seconds() / 86400:.2f}",
            f"{item.amount or 0:.2f}",
        ]


SummaryBuilder = Callable[[Filters, datetime], tuple[list[str], list[list[str]]]]


def _exceptions_by_kind(filters: Filters, now: datetime) -> tuple[list[str], list[list[str]]]:
    rows = selectors.open_exceptions_by_kind(filters)
    return ["kind", "label", "open", "money_at_risk"], [
        [r.kind, r.label, str(r.count), f"{r.amount:.2f}"] for r in rows
    ]


def _backlog(filters: Filters, now: datetime) -> tuple[list[str], list[list[str]]]:
    rows = selectors.backlog_by_age(filters, now)
    return ["age_band", "open", "money_at_risk"], [[r.band, str(r.count), f"{r.amount:.2f}"] for r in rows]


def _sla(filters: Filters, now: datetime) -> tuple[list[str], list[list[str]]]:
    rows = selectors.sla_compliance(filters, now)
    return (
        ["workflow", "label", "compliance", "met", "breached", "pending"],
        [
            [
                r.workflow,
                r.label,
                "" if r.compliance is None else f"{r.compliance:.4f}",
                str(r.met),
                str(r.breached),
                str(r.pending),
            ]
            for r in rows
        ],
    )


def _close(filters: Filters, now: datetime) -> tuple[list[str], list[list[str]]]:
    rows = selectors.close_readiness(filters)
    header = [
        "period",
        "ready",
        "dnfb_accounts",
        "dnfb_amount",
        "unposted_remits",
        "unmatched_invoices",
        "labour_posted",
        "open_exceptions",
    ]
    return header, [
        [
            r.period,
            _flag(r.ready),
            str(r.dnfb_count),
            f"{r.dnfb_amount:.2f}",
            str(r.unposted_remits),
            str(r.unmatched_invoices),
            _flag(r.labour_posted),
            str(r.open_exceptions),
        ]
        for r in rows
    ]


def _weekly(filters: Filters, now: datetime) -> tuple[list[str], list[list[str]]]:
    rows = selectors.weekly_points(filters)
    return ["week_start", "billed", "median_days"], [
        [p.week_start.isoformat(), str(p.billed), f"{p.median_days:.2f}"] for p in rows
    ]


SUMMARY_TABLES: dict[str, tuple[str, SummaryBuilder]] = {
    "exceptions_by_kind": ("Open exceptions by kind", _exceptions_by_kind),
    "backlog_by_age": ("Exception backlog by age", _backlog),
    "sla": ("SLA compliance by workflow", _sla),
    "close_readiness": ("Close readiness per period", _close),
    "weekly_trend": ("Discharge-to-bill by week", _weekly),
}
EXCEPTIONS = "exceptions"


def table_names() -> list[str]:
    return [*FACT_TABLES, EXCEPTIONS, *SUMMARY_TABLES]
