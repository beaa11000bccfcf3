"""The KPI endpoint: the dashboard's filters and the dashboard's numbers, from the same selector."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from dashboards import selectors
from dashboards.forms import DashboardFilterForm
from tests import console_data


@pytest.fixture
def accounts(db: None) -> None:
    now = timezone.now()
    console_data.billed_run("A1", now - timedelta(days=3), 24, facility="NORTH", payer="ACME")
    console_data.billed_run("A2", now - timedelta(days=2), 72, facility="SOUTH", payer="BLUE")
    console_data.billed_run("A3", now - timedelta(days=1), None, facility="NORTH", amount=Decimal("250.00"))


def test_kpis_take_the_dashboard_filters_and_give_its_numbers(
    accounts: None, api_for: Callable[..., APIClient], executive: User
) -> None:
    query = {"facility": "NORTH"}
    data = api_for(executive).get("/api/v1/kpis/", query).json()
    form = DashboardFilterForm(query)
    expected = selectors.kpis(filters=form.to_filters())
    assert data["runs_discharged"] == expected.runs_discharged == 2
    assert data["discharge_to_bill"]["median_hours"] == pytest.approx(24)
    assert Decimal(data["dnfb_amount"]) == expected.dnfb_amount == Decimal("250.00")
    assert {
        "coding_lag",
        "bill_hold",
        "late_charge_rate",
        "clean_claim_rate",
        "first_pass_yield",
        "po_cycle",
    } <= set(data)
    assert data["close_readiness"][-1]["dnfb_count"] == 1
    payer = api_for(executive).get("/api/v1/kpis/", {"payer": "BLUE"}).json()
    assert payer["runs_discharged"] == 1


@pytest.mark.parametrize(
    "query",
    [
        {"start": "2025-03-10", "end": "2025-03-01"},
        {"start": "0001-01-01"},
        {"patient_class": "Z"},
        {"end": "nope"},
    ],
)
def test_bad_filters_are_a_problem_detail(
    db: None, api_for: Callable[..., APIClient], executive: User, query: dict[str, str]
) -> None:
    response = api_for(executive).get("/api/v1/kpis/", query)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/problem+json")


def test_the_schema_documents_the_filters(
    db: None, api_for: Callable[..., APIClient], engineer: User
) -> None:
    schema = api_for(engineer).get("/api/schema/", {"format": "json"}).json()
    params = {p["name"] for p in schema["paths"]["/api/v1/kpis/"]["get"]["parameters"]}
    assert {"facility", "payer", "patient_class", "start", "end"} <= params
