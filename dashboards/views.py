"""Executive and operations dashboard: aggregates only, so roles without PHI access may open it."""

from __future__ import annotations

import csv
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from dashboards import charts, selectors
from dashboards.forms import DashboardFilterForm
from healthsync.views import render_htmx

TILE_REFRESH_SECONDS = 10
# The filter form swaps this element; a poll of the tiles swaps only #kpi-tiles.
MAIN_TARGET = "dashboard-main"


def _filters(request: HttpRequest) -> tuple[DashboardFilterForm, selectors.Filters]:
    form = DashboardFilterForm(request.GET)
    # An invalid form keeps the raw input and its errors on the page and falls back to the default window.
    form.is_valid()
    return form, form.to_filters(timezone.now())


def _tile_context(request: HttpRequest, form: DashboardFilterForm, kpis: selectors.Kpis) -> dict[str, Any]:
    return {
        "form": form,
        "kpis": kpis,
        "window_days": selectors.WINDOW_DAYS,
        "adgpsr_days": selectors.ADGPSR_DAYS,
        "max_range_days": selectors.MAX_RANGE_DAYS,
        "refresh_seconds": TILE_REFRESH_SECONDS,
        "query": request.GET.urlencode(),
    }


@login_required
@permission_required("workflows.view_kpis", raise_exception=True)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    form, filters = _filters(request)
    durations = selectors.billed_durations(filters)
    kpis = selectors.kpis(timezone.now(), durations=durations, filters=filters)
    context = _tile_context(request, form, kpis)
    context.update(
        facilities=selectors.facilities(),
        trend_chart=charts.to_div(charts.weekly_trend_figure(selectors.weekly_trend(durations))),
        distribution_chart=charts.to_div(charts.distribution_figure([d.hours / 24 for d in durations])),
        exceptions_chart=charts.to_div(charts.exceptions_by_kind_figure(kpis.open_exceptions)),
        backlog_chart=charts.to_div(charts.backlog_by_age_figure(kpis.backlog)),
    )
    htmx = getattr(request, "htmx", None)
    partial = "main" if htmx and htmx.target == MAIN_TARGET else "tiles"
    status = 400 if form.errors else 200
    return render_htmx(request, "dashboards/dashboard.html", partial, context, status=status)


@login_required
@permission_required("workflows.view_kpis", raise_exception=True)
@require_GET
def dashboard_tiles(request: HttpRequest) -> HttpResponse:
    """The KPI tiles alone; the dashboard polls this every few seconds with its filters."""
    form, filters = _filters(request)
    context = _tile_context(request, form, selectors.kpis(timezone.now(), filters=filters))
    response = render(request, "dashboards/dashboard.html#tiles", context, status=400 if form.errors else 200)
    patch_vary_headers(response, ("HX-Request",))
    return response


@login_required
@permission_required("workflows.view_kpis", raise_exception=True)
@require_GET
def export_csv(request: HttpRequest) -> HttpResponse:
    """The accounts behind the discharge-to-bill figure, with the same filters as the page."""
    form, filters = _filters(request)
    if form.errors:
        return HttpResponse(
            "Bad filters: " + "; ".join(e for errors in form.errors.values() for e in errors),
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    rows = selectors.export_rows(filters, with_phi=request.user.has_perm("healthsync.view_phi"))
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="discharge-to-bill.csv"'
    response["Cache-Control"] = "no-store"
    csv.writer(response).writerows(rows)
    return response
