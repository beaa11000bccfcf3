"""The dashboard pages read the rollups in a fixed number of queries, whatever the data: no query per day,
workflow, age band or month may creep back (at 1,000,000 runs each round trip costs the page its budget)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dashboards import rollups
from healthsync.choices import ExceptionKind
from healthsync.models import ExceptionItem
from tests import console_data

HX = {"HTTP_HX_REQUEST": "true"}
# The queries each page takes, counted inside the test's transaction: session, user and permissions (4), the
# rollup catch-up (a savepoint pair around it here), then the figures: the rollup days of every workflow in one
# query, the partial days (or a two-facet window) counted by day in three, exceptions by kind and by age band,
# and close readiness in four. Raising a figure needs a reason in the commit message.
PAGES = {
    "/dashboard/": 25,
    "/dashboard/tiles/": 16,
    "/dashboard/?facility=NORTH": 25,
    "/dashboard/?facility=NORTH&patient_class=I": 25,
    "/dashboard/?payer=ACME&patient_class=I": 22,
}


def _load(runs: int, prefix: str) -> None:
    """`runs` billed and unbilled accounts spread over the last 120 days, exceptions of every age band."""
    now = timezone.now()
    for index in range(runs):
        discharged = now - timedelta(days=index * 120 / runs, hours=index % 5)
        console_data.billed_run(
            f"{prefix}{index}",
            discharged,
            None if index % 4 == 0 else 6 + index % 90,
            patient_class="IO"[index % 2],
            facility=("NORTH", "SOUTH")[index % 2],
        )
    for index, hours in enumerate((2, 30, 100, 400)):
        ExceptionItem.objects.create(
            kind=ExceptionKind.MISSING_DATA,
            workflow="discharge_to_bill",
            business_key=f"{prefix}{index}",
            facility="NORTH",
            amount=Decimal("10.00"),
            created_at=now - timedelta(hours=hours),
        )
    rollups.refresh()


def _counts(client: Client) -> dict[str, int]:
    out = {}
    for url in PAGES:
        client.get(url, **HX if "tiles" in url else {})  # warm: the catch-up has nothing left to fold
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, **HX if "tiles" in url else {})
        assert response.status_code == 200, url
        out[url] = len(queries)
    return out


@pytest.mark.django_db
def test_dashboard_pages_take_a_bounded_number_of_queries(
    client_for: Callable[[User], Client], executive: User
) -> None:
    client = client_for(executive)
    _load(8, "A")
    few = _counts(client)
    for url, pinned in PAGES.items():
        assert few[url] == pinned, f"{url}: {few[url]} queries, pinned at {pinned}"
    # Fifteen times the runs over more days, weeks and months: not one query more.
    _load(120, "B")
    assert _counts(client) == few
