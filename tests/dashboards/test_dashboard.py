"""Dashboard KPIs computed from known runs, the chart figures, and the page itself (aggregates only)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client

from dashboards import charts, selectors
from dashboards.selectors import ExceptionKindRow, WeeklyPoint
from healthsync.choices import ExceptionKind, ExceptionStatus, RunStatus
from tests import console_data

HX = {"HTTP_HX_REQUEST": "true"}
NOW = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
RAISED = NOW - timedelta(hours=5)


def test_percentile_interpolates_linearly() -> None:
    assert selectors.percentile([], 50) is None
    assert selectors.percentile([7.0], 90) == 7.0
    assert selectors.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert selectors.percentile([10.0, 20.0, 30.0, 40.0, 50.0], 90) == pytest.approx(46.0)
    assert selectors.percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert selectors.percentile([3.0, 1.0, 2.0], 100) == 3.0


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        selectors.percentile([1.0], 101)


@pytest.fixture
def runs(db: None) -> None:
    # Billed inpatient runs: 24, 48, 72, 96 h; outpatient 12 h; unbilled, blocked, cancelled, too old.
    day = timedelta(days=1)
    console_data.billed_run("I1", NOW - 10 * day, 24)
    console_data.billed_run("I2", NOW - 10 * day, 48)
    console_data.billed_run("I3", NOW - 3 * day, 72)
    console_data.billed_run("I4", NOW - 20 * day, 96)
    console_data.billed_run("O1", NOW - 3 * day, 12, patient_class="O")
    console_data.billed_run("U1", NOW - 2 * day, None, amount=Decimal("500.00"))
    console_data.billed_run("B1", NOW - 2 * day, None, amount=Decimal("250.00"), status=RunStatus.BLOCKED)
    console_data.billed_run("C1", NOW - 2 * day, None, amount=Decimal("999.00"), status=RunStatus.CANCELLED)
    console_data.billed_run("OLD", NOW - 120 * day, 1)


def test_kpis_from_known_runs(runs: None) -> None:
    kpis = selectors.kpis(now=NOW)
    # All billed in window: 12, 24, 48, 72, 96 h → median 48, p90 = 72 + 0.6 * 24 = 86.4.
    assert kpis.discharge_to_bill.count == 5
    assert kpis.discharge_to_bill.median_hours == pytest.approx(48)
    assert kpis.discharge_to_bill.p90_hours == pytest.approx(86.4)
    assert kpis.discharge_to_bill.median_days == pytest.approx(2)
    assert kpis.discharge_to_bill.p90_days == pytest.approx(3.6)
    # Claim lag is inpatient only: 24, 48, 72, 96 → median 60, p90 = 72 + 0.7 * 24 = 88.8.
    assert kpis.claim_lag.count == 4
    assert kpis.claim_lag.median_hours == pytest.approx(60)
    assert kpis.claim_lag.p90_hours == pytest.approx(88.8)
    assert kpis.runs_discharged == 8
    assert kpis.runs_billed == 5
    assert kpis.runs_blocked == 1
    assert kpis.dnfb_amount == Decimal("750.00")


def test_kpis_with_no_runs_are_empty(db: None) -> None:
    kpis = selectors.kpis(now=NOW)
    assert kpis.discharge_to_bill.count == 0
    assert kpis.discharge_to_bill.median_hours is None
    assert kpis.discharge_to_bill.median_days is None
    assert kpis.runs_discharged == 0
    assert kpis.money_at_risk == Decimal("0")


def test_a_claim_before_its_discharge_is_left_out(db: None) -> None:
    console_data.billed_run("BAD", NOW - timedelta(days=2), -5)
    assert selectors.billed_durations(selectors.window_start(NOW)) == []


def test_open_exceptions_by_kind_and_money_at_risk(db: None) -> None:
    console_data.exception_item(kind=ExceptionKind.MISSING_DATA, amount=Decimal("100.00"), created_at=RAISED)
    console_data.exception_item(
        kind=ExceptionKind.MISSING_DATA,
        amount=Decimal("50.25"),
        status=ExceptionStatus.IN_PROGRESS,
        created_at=RAISED,
    )
    console_data.exception_item(
        kind=ExceptionKind.DESTINATION_DOWN, amount=Decimal("10.00"), created_at=RAISED
    )
    console_data.exception_item(
        kind=ExceptionKind.MISMATCH, amount=Decimal("999.00"), status=ExceptionStatus.RESOLVED
    )
    kpis = selectors.kpis(now=NOW)
    by_kind = {row.kind: (row.count, row.amount) for row in kpis.open_exceptions}
    assert by_kind == {
        "missing_data": (2, Decimal("150.25")),
        "destination_down": (1, Decimal("10.00")),
    }
    assert kpis.open_exception_count == 3
    assert kpis.money_at_risk == Decimal("160.25")


def test_weekly_trend_groups_by_discharge_week(runs: None) -> None:
    points = selectors.weekly_trend(selectors.billed_durations(selectors.window_start(NOW)))
    # NOW is Monday 2025-03-31: discharges on 03-21 (x2), 03-28 (x2, incl. outpatient), 03-11.
    assert [(p.week_start, p.billed) for p in points] == [
        (date(2025, 3, 10), 1),
        (date(2025, 3, 17), 2),
        (date(2025, 3, 24), 2),
    ]
    assert points[1].median_days == pytest.approx(1.5)
    assert points[2].median_days == pytest.approx(1.75)


def test_weekly_trend_figure_has_counts_and_medians() -> None:
    points = [WeeklyPoint(date(2025, 3, 3), 4, 2.25), WeeklyPoint(date(2025, 3, 10), 6, 1.5)]
    fig = charts.weekly_trend_figure(points)
    bars, line = fig.data
    assert bars.type == "bar"
    assert list(bars.x) == ["2025-03-03", "2025-03-10"]
    assert list(bars.y) == [4, 6]
    assert line.type == "scatter"
    assert list(line.y) == [2.25, 1.5]
    assert line.yaxis == "y2"


def test_distribution_figure_is_a_histogram_of_days() -> None:
    fig = charts.distribution_figure([0.5, 1.0, 3.25])
    (histogram,) = fig.data
    assert histogram.type == "histogram"
    assert list(histogram.x) == [0.5, 1.0, 3.25]
    assert histogram.xbins.size == 0.5


def test_exceptions_figure_has_counts_and_amounts() -> None:
    rows = [ExceptionKindRow("missing_data", "Missing data", 3, Decimal("120.50"))]
    (bar,) = charts.exceptions_by_kind_figure(rows).data
    assert list(bar.x) == ["Missing data"]
    assert list(bar.y) == [3]
    assert list(bar.customdata) == [120.5]


def test_charts_embed_without_loading_plotly_from_anywhere() -> None:
    html = charts.to_div(charts.distribution_figure([1.0]))
    assert "Plotly.newPlot" in html
    assert "cdn" not in html.lower()
    assert "<script src" not in html


def test_dashboard_page_uses_the_local_plotly_and_shows_the_definitions(
    client_for: Callable[[User], Client], executive: User
) -> None:
    body = client_for(executive).get("/dashboard/").content.decode()
    assert '<script src="/static/vendor/plotly.min.js">' in body
    assert "cdn.plot.ly" not in body
    assert "Claim lag" in body
    assert "for inpatient accounts (patient class I) the date of service is the" in body
    assert body.count("Plotly.newPlot") == 4
    assert "&lt;div" not in body  # the figures are embedded as markup, not escaped into text


def test_dashboard_shows_no_patient_level_data(client_for: Callable[[User], Client], executive: User) -> None:
    console_data.billed_run("ENC-SECRET-1", console_data.days_ago(2), 30)
    console_data.exception_item(business_key="ENC-SECRET-2", message=console_data.message())
    body = client_for(executive).get("/dashboard/").content.decode()
    assert "ENC-SECRET" not in body
    assert console_data.PATIENT_MRN not in body
    assert "DOE" not in body


def test_tiles_partial_refreshes_itself(client_for: Callable[[User], Client], executive: User) -> None:
    console_data.billed_run("E1", console_data.days_ago(2), 36)
    response = client_for(executive).get("/dashboard/tiles/", **HX)
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="kpi-tiles"')
    assert "<html" not in body
    assert 'hx-trigger="every 10s"' in body
    assert "1.5 <span" in body  # 36 h median = 1.5 days
    assert "HX-Request" in response["Vary"]


def test_htmx_request_to_the_dashboard_gets_the_tiles_only(
    client_for: Callable[[User], Client], executive: User
) -> None:
    body = client_for(executive).get("/dashboard/", **HX).content.decode()
    assert body.lstrip().startswith('<section id="kpi-tiles"')
    assert "Plotly.newPlot" not in body
