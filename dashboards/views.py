"""Executive dashboard, the drill-down behind every figure, and the CSV of every table."""

from __future__ import annotations

import csv
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from dashboards import charts, drilldown, selectors
from dashboards.definitions import DEFINITIONS
from dashboards.forms import DashboardFilterForm
from healthsync.audit import record_phi_access
from healthsync.views import querystring_without_page, render_htmx

TILE_REFRESH_SECONDS = 10
# The filter form swaps this element; a poll of the tiles swaps only #kpi-tiles.
MAIN_TARGET = "dashboard-main"
DRILL_PAGE_SIZE = 50
PHI_PERMISSION = "healthsync.view_phi"
MASK = "••••••"
# A CSV is built in memory: beyond this many rows, narrow the filters (the page says so).
MAX_EXPORT_ROWS = 100_000


def _filters(request: HttpRequest) -> tuple[DashboardFilterForm, selectors.Filters]:
    form = DashboardFilterForm(request.GET)
    # An invalid form keeps the raw input and its errors on the page and falls back to the default window.
    form.is_valid()
    return form, form.to_filters(timezone.now())


def _query(request: HttpRequest) -> str:
    """The filters alone, for links to drill-downs and exports (no page, no table-specific keys)."""
    params = request.GET.copy()
    for key in ("page", "band"):
        params.pop(key, None)
    return params.urlencode()


def _month_query(request: HttpRequest, row: selectors.PeriodReadiness) -> str:
    """The filters narrowed to one month, for the close-readiness drill-downs."""
    params = request.GET.copy()
    params.pop("page", None)
    params["start"], params["end"] = row.start.isoformat(), row.end.isoformat()
    return params.urlencode()


def _tile_context(request: HttpRequest, form: DashboardFilterForm, kpis: selectors.Kpis) -> dict[str, Any]:
    return {
        "form": form,
        "kpis": kpis,
        "defs": DEFINITIONS,
        "window_days": selectors.WINDOW_DAYS,
        "adgpsr_days": selectors.ADGPSR_DAYS,
        "max_range_days": selectors.MAX_RANGE_DAYS,
        "refresh_seconds": TILE_REFRESH_SECONDS,
        "query": _query(request),
    }


def _bad_filters(form: DashboardFilterForm) -> HttpResponse:
    return HttpResponse(
        "Bad filters: " + "; ".join(e for errors in form.errors.values() for e in errors),
        status=400,
        content_type="text/plain; charset=utf-8",
    )


@login_required
@permission_required("workflows.view_kpis", raise_exception=True)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    form, filters = _filters(request)
    now = timezone.now()
    kpis = selectors.kpis(now, filters=filters)
    context = _tile_context(request, form, kpis)
    context.update(
        facilities=selectors.facilities(),
        payers=selectors.payers(),
        close=[(row, _month_query(request, row)) for row in selectors.close_readiness(filters)],
        sla_tables={wf: f"sla_{wf}" for wf in (row.workflow for row in kpis.sla)},
        trend_chart=charts.to_div(charts.weekly_trend_figure(selectors.weekly_points(filters, kpis.days))),
        distribution_chart=charts.to_div(
            charts.distribution_bins_figure(selectors.distribution(filters, kpis.days))
        ),
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
def drill(request: HttpRequest, table: str) -> HttpResponse:
    """The accounts (or POs, remittances, exceptions) behind one figure, with the dashboard's filters, paginated."""
    form, filters = _filters(request)
    if form.errors:
        return _bad_filters(form)
    now = timezone.now()
    selectors.catch_up()
    with_phi = request.user.has_perm(PHI_PERMISSION)
    context: dict[str, Any] = {
        "table": table,
        "form": form,
        "query": _query(request),
        "querystring": querystring_without_page(request),
        "can_view_phi": with_phi,
    }
    if table == drilldown.EXCEPTIONS:
        band = request.GET.get("band", "")
        page = Paginator(drilldown.exceptions(filters, band, now), DRILL_PAGE_SIZE).get_page(
            request.GET.get("page")
        )
        context.update(
            label="Open exceptions" + (f", {band} old" if band else ""),
            definition=DEFINITIONS["exceptions"].text,
            header=drilldown.EXCEPTION_HEADER,
            rows=list(drilldown.exception_rows(page, now)),
            page=page,
            band=band,
        )
    else:
        spec = drilldown.FACT_TABLES.get(table)
        if spec is None:
            raise Http404(f"No figure is called {table!r}.")
        page = Paginator(spec.queryset(filters).select_related("run"), DRILL_PAGE_SIZE).get_page(
            request.GET.get("page")
        )
        header = spec.header(with_phi=True)
        rows = []
        for fact in page:
            row = spec.row(fact, with_phi=with_phi)
            if with_phi:
                # Every account whose identity this page shows is an audited PHI access.
                record_phi_access(fact.run)
            else:
                row += [MASK] * len(drilldown.PHI_HEADERS)
            rows.append(row)
        context.update(label=spec.label, definition=spec.definition, header=header, rows=rows, page=page)
    return render_htmx(request, "dashboards/drilldown.html", "results", context)


@login_required
@permission_required("workflows.view_kpis", raise_exception=True)
@require_GET
def export_csv(request: HttpRequest, table: str = "discharge_to_bill") -> HttpResponse:
    """Any table of the dashboard or its drill-downs as CSV, with the same filters as the page."""
    form, filters = _filters(request)
    if form.errors:
        return _bad_filters(form)
    now = timezone.now()
    with_phi = request.user.has_perm(PHI_PERMISSION)
    selectors.catch_up()
    if table == drilldown.EXCEPTIONS:
        items = drilldown.exceptions(filters, request.GET.get("band", ""), now)[:MAX_EXPORT_ROWS]
        header, rows = drilldown.EXCEPTION_HEADER, drilldown.exception_rows(items.iterator(), now)
    elif table in drilldown.SUMMARY_TABLES:
        header, rows = drilldown.SUMMARY_TABLES[table][1](filters, now)
    elif table in drilldown.FACT_TABLES:
        spec = drilldown.FACT_TABLES[table]
        header, rows = spec.header(with_phi=with_phi), []
        for fact in spec.queryset(filters).select_related("run")[:MAX_EXPORT_ROWS].iterator(chunk_size=2000):
            rows.append(spec.row(fact, with_phi=with_phi))
            if with_phi:
                record_phi_access(fact.run)
    else:
        raise Http404(f"No table is called {table!r}.")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{table.replace("_", "-")}.csv"'
    response["Cache-Control"] = "no-store"
    writer = csv.writer(response)
    writer.writerow(header)
    writer.writerows(rows)
    return response
