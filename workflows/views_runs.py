"""Workflow run pages: a business key's timeline across EHR, RCM and ERP, and close readiness per period."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from workflows.definitions import WORKFLOWS
from workflows.models import WorkflowRun
from workflows.selectors import close_readiness, run_summary, timeline


@login_required
@permission_required("workflows.view_workflowrun", raise_exception=True)
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    """Find runs by business key (encounter, PO, period, trace number), newest first."""
    q = (request.GET.get("q") or "").strip()[:200]
    workflow = request.GET.get("workflow", "")
    runs = WorkflowRun.objects.all()
    if q:
        runs = runs.filter(business_key__icontains=q)
    if workflow in WORKFLOWS:
        runs = runs.filter(workflow=workflow)
    return render(
        request,
        "workflows/run_list.html",
        {
            "runs": runs.order_by("-updated_at")[:100],
            "q": q,
            "workflow": workflow,
            "workflows": WORKFLOWS.values(),
        },
    )


@login_required
@permission_required("workflows.view_workflowrun", raise_exception=True)
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(WorkflowRun, pk=pk)
    context = {
        "run": run,
        "entries": timeline(run),
        "can_view_messages": request.user.has_perm("healthsync.view_message"),
        **run_summary(run),
    }
    return render(request, "workflows/run_detail.html", context)


@login_required
@permission_required("workflows.view_workflowrun", raise_exception=True)
@require_GET
def close_view(request: HttpRequest) -> HttpResponse:
    period = (request.GET.get("period") or timezone.localdate().strftime("%Y-%m")).strip()
    try:
        readiness = close_readiness(period)
        error = ""
    except ValueError:
        readiness, error = None, f"“{period[:20]}” is not a period: use YYYY-MM, e.g. 2026-01."
    status = 400 if error else 200
    return render(
        request,
        "workflows/close.html",
        {"period": period, "readiness": readiness, "error": error},
        status=status,
    )
