"""The rollup facts, the KPIs added on them, the drill-down behind every figure and the CSV of every table."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client

from dashboards import drilldown, rollups, selectors
from dashboards.models import DirtyRun, RunFact
from dashboards.selectors import Filters
from healthsync.jobs import JOBS, job_run
from healthsync.models import SyncJobRun
from tests import console_data
from workflows.models import WorkflowRun, WorkflowStep
from workflows.runs import record_step

NOW = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
WINDOW = Filters(start=NOW - 30 * DAY, end=NOW)
QUERY = "start=2025-03-01&end=2025-03-31"


def _account(
    key: str, discharged: datetime, payer: str = "ACME", context: dict | None = None, **steps: float
) -> WorkflowRun:
    """A discharge-to-bill run; `steps` gives further steps in hours after the discharge."""
    run = console_data.billed_run(key, discharged, None, payer=payer, facility="NORTH", context=context or {})
    for step, hours in steps.items():
        WorkflowStep.objects.create(run=run, step=step, occurred_at=discharged + hours * HOUR)
    return run


@pytest.fixture
def ledger(db: None) -> None:
    # K1: coded after 48 h, hold released at 72 h, billed at 96 h, paid first time.
    _account("K1", NOW - 20 * DAY, coding_completed=48, bill_hold_released=72, claim_submitted=96, paid=300)
    # K2: coded after 24 h, billed at 24 h but rejected then paid: not clean, not first pass.
    _account(
        "K2", NOW - 10 * DAY, "BLUE", coding_completed=24, claim_submitted=30, claim_rejected=40, paid=200
    )
    # K3: a manual fix before billing, a late charge of 100 on 1000 gross; denied.
    _account(
        "K3",
        NOW - 5 * DAY,
        context={
            "fixes": [{"field": "attending"}],
            "charges": {"1": {"amount": "900"}, "2": {"amount": "100", "late": True}},
        },
        claim_submitted=12,
        denied=100,
    )
    _account("K4", NOW - 2 * DAY)  # discharged, not billed
    po = WorkflowRun.objects.create(
        workflow="procure_to_pay", business_key="PO-1", facility="NORTH", amount=500
    )
    WorkflowStep.objects.create(run=po, step="po_approved", occurred_at=NOW - 12 * DAY)
    WorkflowStep.objects.create(run=po, step="invoice_received", occurred_at=NOW - 9 * DAY)
    WorkflowStep.objects.create(run=po, step="invoice_posted", occurred_at=NOW - 8 * DAY)


def test_new_kpis_from_known_accounts(ledger: None) -> None:
    kpis = selectors.kpis(NOW, filters=WINDOW)
    assert (kpis.coding_lag.count, kpis.coding_lag.median_hours) == (2, pytest.approx(36))
    assert (kpis.bill_hold.count, kpis.bill_hold.median_days) == (1, pytest.approx(3))
    assert kpis.late_charges == Decimal("100.00")
    assert kpis.gross_charges == Decimal("4000.00")  # three runs of 1000 + K3's 1000
    assert kpis.late_charge_rate == pytest.approx(0.025)
    # Submitted: K1, K2, K3. Clean: K1 only (K2 rejected, K3 fixed by hand). First pass: K1 only.
    assert (kpis.claims_submitted, kpis.claims_clean, kpis.claims_first_pass) == (3, 1, 1)
    assert kpis.clean_claim_rate == pytest.approx(1 / 3)
    assert kpis.first_pass_yield == pytest.approx(1 / 3)
    assert (kpis.claims_remitted, kpis.claims_denied) == (3, 1)
    assert (kpis.po_cycle.count, kpis.po_cycle.median_days) == (1, pytest.approx(4))


def test_payer_filter_narrows_every_account_figure(ledger: None) -> None:
    blue = selectors.kpis(NOW, filters=Filters(WINDOW.start, NOW, payer="BLUE"))
    assert blue.runs_discharged == 1
    assert blue.coding_lag.median_hours == pytest.approx(24)
    assert blue.claims_submitted == 1


def test_facts_follow_new_steps_and_agree_with_a_rebuild(ledger: None) -> None:
    selectors.catch_up()
    assert not DirtyRun.objects.exists()
    run = WorkflowRun.objects.get(business_key="K4")
    # As the workflows do: record the step, then save the run whose current step it became.
    record_step(run, "claim_submitted", NOW - DAY)
    run.save()
    assert DirtyRun.objects.filter(run_id=run.pk).exists()
    assert RunFact.objects.get(run=run).done_at is None  # until a refresh
    assert rollups.refresh() == 1
    assert RunFact.objects.get(run=run).dtb_hours == pytest.approx(24)
    incremental = sorted(
        RunFact.objects.values_list("run_id", "dtb_hours", "clean", "sla_met", "sla_breached")
    )
    RunFact.objects.all().delete()
    assert rollups.rebuild() == WorkflowRun.objects.count()
    assert (
        sorted(RunFact.objects.values_list("run_id", "dtb_hours", "clean", "sla_met", "sla_breached"))
        == incremental
    )


def test_a_bulk_load_without_signals_shows_after_rebuild(db: None) -> None:
    run = WorkflowRun.objects.bulk_create(
        [WorkflowRun(workflow="discharge_to_bill", business_key="BULK", amount=10)]
    )[0]
    WorkflowStep.objects.bulk_create([WorkflowStep(run=run, step="discharged", occurred_at=NOW - DAY)])
    assert selectors.kpis(NOW, filters=WINDOW).runs_discharged == 0
    rollups.rebuild()
    assert selectors.kpis(NOW, filters=WINDOW).runs_discharged == 1


def test_the_worker_refreshes_the_rollup_every_minute(ledger: None) -> None:
    assert JOBS["kpi-rollup"].minutes == 1
    assert JOBS["kpi-rollup-rebuild"].daily_at
    pending = DirtyRun.objects.count()
    assert pending >= 5
    run = SyncJobRun.objects.get(pk=job_run("kpi-rollup"))
    assert run.status == "completed"
    assert run.counts == {"refreshed": pending}
    assert not DirtyRun.objects.exists()


def test_close_readiness_per_period(ledger: None) -> None:
    labour = WorkflowRun.objects.create(workflow="labour_allocation", business_key="2025-03")
    WorkflowStep.objects.create(run=labour, step="journal_posted", occurred_at=NOW - DAY)
    rows = {row.period: row for row in selectors.close_readiness(Filters(NOW - 40 * DAY, NOW))}
    assert list(rows) == ["2025-02", "2025-03"]
    march = rows["2025-03"]
    assert (march.dnfb_count, march.dnfb_amount) == (1, Decimal("1000.00"))  # K4
    assert march.labour_posted and not march.ready
    assert not rows["2025-02"].labour_posted


def _csv(response: object) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))  # type: ignore[attr-defined]


def test_drill_down_lists_the_accounts_behind_dnfb_with_phi_masked(
    ledger: None, client_for: Callable[[User], Client], executive: User
) -> None:
    WorkflowRun.objects.filter(business_key="K4").update(context={"patient": {"mrn": "MRN777"}})
    response = client_for(executive).get(f"/dashboard/drill/dnfb/?{QUERY}")
    assert response.status_code == 200
    body = response.content.decode()
    # Whole words: a CSRF token on the page may contain "K1" by chance.
    assert re.search(r"\bK4\b", body) and not re.search(r"\bK1\b", body)
    assert "MRN777" not in body and "••••••" in body
    assert "Gross charges on accounts discharged in the window and not yet final billed" in body
    assert not LogEntry.objects.filter(action=LogEntry.Action.ACCESS).exists()


def test_drill_down_shows_phi_to_roles_that_may_see_it_and_audits_it(
    ledger: None, client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    run = WorkflowRun.objects.get(business_key="K4")
    WorkflowRun.objects.filter(pk=run.pk).update(context={"patient": {"mrn": "MRN777"}})
    body = client_for(rcm_analyst).get(f"/dashboard/drill/dnfb/?{QUERY}").content.decode()
    assert "MRN777" in body
    assert LogEntry.objects.filter(action=LogEntry.Action.ACCESS, object_pk=str(run.pk)).count() == 1


def test_drill_down_pages_and_swaps_over_htmx(
    db: None, client_for: Callable[[User], Client], executive: User
) -> None:
    for n in range(55):
        console_data.billed_run(f"P{n:02d}", NOW - DAY - n * HOUR, None)
    client = client_for(executive)
    first = client.get(f"/dashboard/drill/runs_discharged/?{QUERY}")
    assert "Page 1 of 2" in first.content.decode()
    second = client.get(f"/dashboard/drill/runs_discharged/?{QUERY}&page=2", HTTP_HX_REQUEST="true")
    body = second.content.decode()
    assert body.lstrip().startswith('<section id="drill-results"')
    assert body.count("<tr>") == 1 + 5  # header + the last five


def test_exception_drill_down_by_age_band(
    db: None, client_for: Callable[[User], Client], executive: User
) -> None:
    console_data.exception_item(business_key="OLD", amount=Decimal("5.00"))
    body = client_for(executive).get("/dashboard/drill/exceptions/?band=0-1d").content.decode()
    assert "OLD" in body


def test_unknown_figure_is_not_found(db: None, client_for: Callable[[User], Client], executive: User) -> None:
    assert client_for(executive).get("/dashboard/drill/nonsense/").status_code == 404
    assert client_for(executive).get("/dashboard/export/nonsense.csv").status_code == 404


@pytest.mark.parametrize("table", drilldown.table_names())
def test_every_table_exports_as_csv(
    ledger: None, client_for: Callable[[User], Client], executive: User, table: str
) -> None:
    response = client_for(executive).get(f"/dashboard/export/{table}.csv?{QUERY}")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = _csv(response)
    assert rows[0] and all(len(row) == len(rows[0]) for row in rows)
    assert "patient_mrn" not in rows[0]


def test_csv_rows_match_the_figure(
    ledger: None, client_for: Callable[[User], Client], executive: User
) -> None:
    rows = _csv(client_for(executive).get(f"/dashboard/export/coding_lag.csv?{QUERY}"))
    assert rows[0][-1] == "coding_lag_days"
    assert sorted(row[-1] for row in rows[1:]) == ["1.00", "2.00"]
    close = _csv(client_for(executive).get(f"/dashboard/export/close_readiness.csv?{QUERY}"))
    assert close[1][:4] == ["2025-03", "no", "1", "1000.00"]


def test_the_page_links_every_figure_to_its_accounts_and_explains_it(
    ledger: None, client_for: Callable[[User], Client], executive: User
) -> None:
    body = client_for(executive).get(f"/dashboard/?{QUERY}&payer=ACME").content.decode()
    for key in (
        "coding_lag",
        "bill_hold",
        "late_charges",
        "clean_claims",
        "first_pass",
        "po_cycle",
        "dnfb",
        "denials",
    ):
        assert f"/dashboard/drill/{key}/?{QUERY.replace('&', '&amp;')}&amp;payer=ACME" in body
    assert "Final coded time (coding.completed) minus discharge time" in body
    assert "Close readiness per period" in body
    assert "/dashboard/export/close_readiness.csv" in body


def test_daily_rollup_and_live_tally_give_the_same_figures(ledger: None) -> None:
    # One facet reads whole days from the rollup; two facets tally the facts live. Every ledger account is class I.
    rolled = selectors.kpis(NOW, filters=Filters(WINDOW.start, NOW, facility="NORTH"))
    live = selectors.kpis(NOW, filters=Filters(WINDOW.start, NOW, facility="NORTH", patient_class="I"))
    for name in (
        "discharge_to_bill",
        "coding_lag",
        "bill_hold",
        "payment_lag",
        "runs_discharged",
        "dnfb_amount",
    ):
        assert getattr(rolled, name) == getattr(live, name)
    assert (rolled.late_charges, rolled.claims_clean, rolled.claims_first_pass) == (
        live.late_charges,
        live.claims_clean,
        live.claims_first_pass,
    )
    # Discharge-to-bill only: the PO has a facility but no patient class, so the class facet drops it.
    assert rolled.sla[0] == live.sla[0]


def test_histogram_percentile_matches_the_exact_percentile() -> None:
    from collections import Counter

    from dashboards.tally import histogram_percentile

    values = [12, 24, 24, 48, 72, 96, 100]
    for pct in (0, 25, 50, 90, 100):
        assert histogram_percentile(Counter(values), pct) == pytest.approx(selectors.percentile(values, pct))
