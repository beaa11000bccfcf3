"""Executive and operations dashboard: aggregates only, so roles without PHI access may open it."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from dashboards import charts, selectors
from healthsync.views import render_htmx

TILE_REFRESH_SECONDS = 10


@login_required
@permission_required("workflows.view_kpis", raise_exception=True)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    durations = selectors.billed_durations(selectors.window_start(now))
    kpis = selectors.kpis(now, durations=durations)
    context = {
        "kpis": kpis,
        "window_days": selectors.WINDOW_DAYS,
        "refresh_seconds": TILE_REFRESH_SECONDS,
        "trend_chart": charts.to_div(charts.weekly_trend_figure(selectors.weekly_trend(durations))),
        "distribution_chart": charts.to_div(charts.distribution_figure([d.hours / 24 for d in durations])),
        "exceptions_chart": charts.to_div(charts.exceptions_by_kind_figure(kpis.open_exceptions)),
    }
    return render_htmx(request, "dashboards/dashboard.html", "tiles", context)


@login_required
@permission_required("workflows.view_kpis", raise_exception=True)
@require_GET
def dashboard_tiles(request: HttpRequest) -> HttpResponse:
    """The KPI tiles alone; the dashboard polls this every few seconds."""
    context = {
        "kpis": selectors.kpis(),
        "window_days": selectors.WINDOW_DAYS,
        "refresh_seconds": TILE_REFRESH_SECONDS,
    }
    response = render(request, "dashboards/dashboard.html#tiles", context)
    patch_vary_headers(response, ("HX-Request",))
    return response
