"""DNFB days, payment lag, denial rate, backlog by age, SLA compliance, filters and the CSV export, from known data."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client

from dashboards import charts, selectors
from dashboards.forms import DashboardFilterForm
from dashboards.selectors import AgeBandRow, Filters
from healthsync.choices import ExceptionStatus
from tests import console_data
from workflows.models import WorkflowRun, WorkflowStep

NOW = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
WINDOW = Filters(start=NOW - 30 * DAY, end=NOW)
# The same window as the page's date filter 2025-03-01..2025-03-31 (UTC).
QUERY = "start=2025-03-01&end=2025-03-31"


def _run(
    key: str,
    facility: str,
    patient_class: str,
    amount: str,
    discharged: datetime,
    submitted_after: float | None = None,
    **later: float,
) -> WorkflowRun:
    """A discharge-to-bill run; `later` gives further steps in hours after the claim submission."""
    run = console_data.billed_run(
        key,
        discharged,
        submitted_after,
        patient_class=patient_class,
        amount=Decimal(amount),
        facility=facility,
    )
    if submitted_after is not None:
        submitted = discharged + submitted_after * HOUR
        for step, hours in later.items():
            WorkflowStep.objects.create(run=run, step=step, occurred_at=submitted + hours * HOUR)
    return run


@pytest.fixture
def accounts(db: None) -> None:
    _run("A", "NORTH", "I", "900.00", NOW - 20 * DAY, 48, paid=240)
    _run("B", "NORTH", "I", "600.00", NOW - 5 * DAY, 24, denied=72)
    _run("C", "SOUTH", "O", "300.00", NOW - 4 * DAY, 12, paid=72)
    _run("D", "NORTH", "I", "450.00", NOW - 2 * DAY)
    _run("E", "SOUTH", "O", "150.00", NOW - 1 * DAY)
    _run(
        "F", "NORTH", "I", "1000.00", NOW - 60 * DAY, 24
    )  # before the 30-day window, inside ADGPSR's 90 days
    _run("G", "NORTH", "I", "200.00", NOW - 6 * DAY, 24, paid=48, denied=96)  # paid first: not a denial


def test_new_kpis_from_known_accounts(accounts: None) -> None:
    kpis = selectors.kpis(NOW, filters=WINDOW)
    assert kpis.discharge_to_bill.count == 4  # A 48, B 24, C 12, G 24 h
    assert kpis.discharge_to_bill.median_hours == pytest.approx(24)
    assert kpis.discharge_to_bill.p90_hours == pytest.approx(40.8)
    assert kpis.dnfb_amount == Decimal("600.00")  # D + E
    assert kpis.adgpsr == Decimal("40.00")  # 3600 discharged in 90 days ÷ 90
    assert kpis.dnfb_days == Decimal("15.00")
    assert kpis.payment_lag.count == 3  # A 240, C 72, G 48 h
    assert kpis.payment_lag.median_hours == pytest.approx(72)
    assert (kpis.claims_remitted, kpis.claims_denied) == (4, 1)
    assert kpis.denial_rate == pytest.approx(0.25)


def test_facility_filter_applies_to_every_account_figure(accounts: None) -> None:
    kpis = selectors.kpis(NOW, filters=Filters(start=WINDOW.start, end=NOW, facility="NORTH"))
    assert kpis.discharge_to_bill.count == 3
    assert kpis.dnfb_amount == Decimal("450.00")
    assert kpis.adgpsr == Decimal("35.00")  # 3150 ÷ 90
    assert kpis.dnfb_days == Decimal("12.86")
    assert kpis.payment_lag.median_hours == pytest.approx(144)  # A 240, G 48
    assert (kpis.claims_remitted, kpis.claims_denied) == (3, 1)


def test_patient_class_filter_applies_to_every_account_figure(accounts: None) -> None:
    kpis = selectors.kpis(NOW, filters=Filters(start=WINDOW.start, end=NOW, patient_class="O"))
    assert kpis.discharge_to_bill.count == 1
    assert kpis.dnfb_amount == Decimal("150.00")
    assert kpis.adgpsr == Decimal("5.00")
    assert kpis.dnfb_days == Decimal("30.00")
    assert (kpis.claims_remitted, kpis.claims_denied) == (1, 0)


def test_date_range_picks_accounts_by_discharge_time(accounts: None) -> None:
    kpis = selectors.kpis(NOW, filters=Filters(start=NOW - 5.5 * DAY, end=NOW))
    assert kpis.discharge_to_bill.count == 2  # B 24, C 12
    assert kpis.discharge_to_bill.median_hours == pytest.approx(18)
    assert kpis.dnfb_amount == Decimal("600.00")
    assert kpis.adgpsr == Decimal("40.00")  # always the 90 days before the window's end
    assert (kpis.claims_remitted, kpis.claims_denied) == (2, 1)


def test_dnfb_days_and_rates_are_empty_without_data(db: None) -> None:
    kpis = selectors.kpis(NOW, filters=WINDOW)
    assert kpis.adgpsr == Decimal("0.00")
    assert kpis.dnfb_days is None
    assert kpis.denial_rate is None
    assert kpis.payment_lag.count == 0
    assert [(row.band, row.count) for row in kpis.backlog] == [
        ("0-1d", 0),
        ("1-3d", 0),
        ("3-7d", 0),
        (">7d", 0),
    ]


def test_backlog_by_age_band_with_money_at_risk(db: None) -> None:
    def item(age: timedelta, amount: str, **fields: object) -> None:
        console_data.exception_item(created_at=NOW - age, amount=Decimal(amount), **fields)

    item(2 * HOUR, "10.00", facility="NORTH")
    item(30 * HOUR, "20.00")
    item(2 * DAY, "40.00", status=ExceptionStatus.IN_PROGRESS)
    item(5 * DAY, "80.00")
    item(10 * DAY, "160.00", facility="NORTH")
    item(10 * DAY, "999.00", status=ExceptionStatus.RESOLVED)
    item(40 * DAY, "500.00")  # raised before the window and still open: the backlog keeps it
    assert selectors.backlog_by_age(WINDOW, NOW) == [
        AgeBandRow("0-1d", 1, Decimal("10.00")),
        AgeBandRow("1-3d", 2, Decimal("60.00")),
        AgeBandRow("3-7d", 1, Decimal("80.00")),
        AgeBandRow(">7d", 2, Decimal("660.00")),
    ]
    north = Filters(start=WINDOW.start, end=NOW, facility="NORTH")
    assert [(r.count, r.amount) for r in selectors.backlog_by_age(north, NOW)] == [
        (1, Decimal("10.00")),
        (0, Decimal("0")),
        (0, Decimal("0")),
        (1, Decimal("160.00")),
    ]


def test_exceptions_take_the_patient_class_of_their_account(accounts: None) -> None:
    console_data.exception_item(business_key="C", created_at=NOW - HOUR, amount=Decimal("30.00"))
    console_data.exception_item(business_key="D", created_at=NOW - HOUR, amount=Decimal("70.00"))
    outpatient = Filters(start=WINDOW.start, end=NOW, patient_class="O")
    assert selectors.kpis(NOW, filters=outpatient).money_at_risk == Decimal("30.00")
    assert selectors.kpis(NOW, filters=WINDOW).money_at_risk == Decimal("100.00")


def test_sla_compliance_per_workflow(db: None) -> None:
    def steps(key: str, workflow: str, facility: str = "", **ago: timedelta) -> None:
        run = WorkflowRun.objects.create(workflow=workflow, business_key=key, facility=facility)
        for step, age in ago.items():
            WorkflowStep.objects.create(run=run, step=step, occurred_at=NOW - age)

    # Left within SLA twice; claim_accepted (30 d SLA) still waiting inside it.
    steps(
        "S1",
        "discharge_to_bill",
        "NORTH",
        discharged=10 * DAY,
        claim_submitted=9 * DAY,
        claim_accepted=8 * DAY,
    )
    # Billed after 5 days (breach); the submission has waited 5 days for an answer (breach).
    steps("S2", "discharge_to_bill", discharged=10 * DAY, claim_submitted=5 * DAY)
    steps("S3", "discharge_to_bill", discharged=DAY)  # within the 3-day SLA: not judged yet
    steps("S4", "discharge_to_bill", discharged=40 * DAY)  # before the window
    steps("P1", "procure_to_pay", po_approved=20 * DAY, received=15 * DAY, invoice_received=2 * DAY)
    rows = {row.workflow: row for row in selectors.sla_compliance(WINDOW, NOW)}
    dtb, p2p = rows["discharge_to_bill"], rows["procure_to_pay"]
    assert (dtb.met, dtb.breached, dtb.pending) == (2, 2, 2)
    assert dtb.compliance == pytest.approx(0.5)
    assert (p2p.met, p2p.breached, p2p.pending) == (1, 1, 0)
    assert rows["remittance"].compliance is None
    north = {row.workflow: row for row in selectors.sla_compliance(Filters(WINDOW.start, NOW, "NORTH"), NOW)}
    assert (north["discharge_to_bill"].met, north["discharge_to_bill"].breached) == (2, 0)
    assert north["discharge_to_bill"].compliance == 1.0


def test_backlog_figure_has_counts_and_amounts() -> None:
    (bar,) = charts.backlog_by_age_figure([AgeBandRow("0-1d", 2, Decimal("12.50"))]).data
    assert list(bar.x) == ["0-1d"]
    assert list(bar.y) == [2]
    assert list(bar.customdata) == [12.5]


def test_filter_form_turns_dates_into_a_whole_day_window() -> None:
    form = DashboardFilterForm(
        {"start": "2025-03-01", "end": "2025-03-31", "facility": "NORTH", "patient_class": "I"}
    )
    assert form.is_valid()
    assert form.to_filters(NOW) == Filters(
        start=datetime(2025, 3, 1, tzinfo=UTC),
        end=datetime(2025, 4, 1, tzinfo=UTC),
        facility="NORTH",
        patient_class="I",
    )
    assert DashboardFilterForm({}).to_filters(NOW) == Filters(start=NOW - 90 * DAY, end=NOW)


def test_filter_form_caps_an_open_ended_range() -> None:
    filters = DashboardFilterForm({"start": "2020-01-01"}).to_filters(NOW)
    assert filters.end == NOW
    assert filters.start == NOW - 366 * DAY


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"start": "2025-04-10", "end": "2025-03-01"}, "The start date must be on or before the end date."),
        ({"start": "2023-01-01", "end": "2025-03-01"}, "Pick a range of at most 366 days."),
        ({"start": "31/03/2025"}, "Enter a valid date."),
        ({"patient_class": "Z"}, "Select a valid choice. Z is not one of the available choices."),
        ({"facility": "X" * 81}, "Ensure this value has at most 80 characters (it has 81)."),
    ],
)
def test_bad_filters_are_rejected_with_a_clear_error_and_the_input_kept(
    client_for: Callable[[User], Client], executive: User, params: dict[str, str], error: str
) -> None:
    response = client_for(executive).get("/dashboard/", params)
    assert response.status_code == 400
    body = response.content.decode()
    assert error in body
    assert "Showing the default window instead." in body
    # The raw input stays in the form so the user can correct it (a choice outside the list cannot be shown).
    for name in ("start", "end", "facility"):
        if name in params:
            assert f'value="{params[name]}"' in body
    assert client_for(executive).get("/dashboard/export.csv", params).status_code == 400


def test_page_shows_the_filtered_figures(
    accounts: None, client_for: Callable[[User], Client], executive: User
) -> None:
    response = client_for(executive).get(f"/dashboard/?{QUERY}&facility=NORTH")
    assert response.status_code == 200
    body = response.content.decode()
    assert "$450.00" in body  # DNFB
    assert "12.9 <span" in body  # DNFB days
    assert "ADGPSR $35.00/day" in body
    assert "1 denied of 3 remitted" in body
    assert "33<span" in body  # denial rate %
    assert "DNFB $ ÷ ADGPSR" in body  # the definitions are on the page
    # SLA, NORTH: met A once, B and G twice; breached: A submitted→paid 10 d, A and G left "paid" after its 1-day SLA,
    # D never billed.
    assert (
        'Discharge to bill to cash</a></td><td class="num">56%</td>\n'
        '            <td class="num">5</td><td class="num">4</td><td class="num">0</td></tr>'
    ) in body
    assert '>0-1d</a></td><td class="num">0</td><td class="num">$0.00</td></tr>' in body
    escaped = QUERY.replace("&", "&amp;")
    assert f"/dashboard/export.csv?{escaped}&amp;facility=NORTH" in body
    assert f"/dashboard/tiles/?{escaped}&amp;facility=NORTH" in body


def test_filter_form_swaps_the_whole_dashboard_over_htmx(
    accounts: None, client_for: Callable[[User], Client], executive: User
) -> None:
    body = (
        client_for(executive)
        .get(f"/dashboard/?{QUERY}&patient_class=O", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="dashboard-main")
        .content.decode()
    )
    assert body.lstrip().startswith('<div id="dashboard-main">')
    assert "<html" not in body
    assert body.count("Plotly.newPlot") == 4
    assert "$150.00" in body  # DNFB of the outpatient account E


def test_tiles_keep_the_filters(
    accounts: None, client_for: Callable[[User], Client], executive: User
) -> None:
    body = client_for(executive).get(f"/dashboard/tiles/?{QUERY}&facility=SOUTH", HTTP_HX_REQUEST="true")
    assert "$150.00" in body.content.decode()


def _csv(response: object) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))  # type: ignore[attr-defined]


def test_export_lists_the_accounts_behind_discharge_to_bill_without_phi(
    accounts: None, client_for: Callable[[User], Client], executive: User
) -> None:
    WorkflowRun.objects.filter(business_key="A").update(
        context={"account_number": "ACC-A", "patient": {"mrn": "MRN123456"}}
    )
    response = client_for(executive).get(f"/dashboard/export.csv?{QUERY}&facility=NORTH")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = _csv(response)
    assert rows[0] == [
        "run_id", "encounter", "account", "facility", "patient_class", "discharged_at", "claim_submitted_at", "days_to_bill"
    ]  # fmt: skip
    assert [row[1:5] + row[7:] for row in rows[1:]] == [
        ["A", "ACC-A", "NORTH", "I", "2.00"],
        ["G", "", "NORTH", "I", "1.00"],
        ["B", "", "NORTH", "I", "1.00"],
    ]
    assert rows[1][5:7] == ["2025-03-11T12:00:00+00:00", "2025-03-13T12:00:00+00:00"]
    assert "MRN123456" not in response.content.decode()


def test_export_adds_the_mrn_for_roles_that_may_see_phi(
    accounts: None, client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    WorkflowRun.objects.filter(business_key="C").update(
        context={"patient": {"mrn": "MRN123456"}}, payer="ACME"
    )
    rows = _csv(client_for(rcm_analyst).get(f"/dashboard/export.csv?{QUERY}&patient_class=O"))
    assert rows[0][-2:] == ["patient_mrn", "payer"]
    assert [row[1] for row in rows[1:]] == ["C"]
    assert rows[1][-2:] == ["MRN123456", "ACME"]


@pytest.mark.parametrize(("role", "status"), [("outsider", 403), ("executive", 200), ("engineer", 200)])
def test_export_needs_the_kpi_permission(
    request: pytest.FixtureRequest, client_for: Callable[[User], Client], role: str, status: int
) -> None:
    response = client_for(request.getfixturevalue(role)).get("/dashboard/export.csv")
    assert response.status_code == status


def test_export_sends_strangers_to_the_login(client: Client, db: None) -> None:
    response = client.get("/dashboard/export.csv")
    assert response.status_code == 302
    assert "login" in response["Location"]
