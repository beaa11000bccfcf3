"""The exception queue: revenue-cycle staff see why work stopped and recover it through the core's services."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.db.models import Count, F, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST

from healthsync import services
from healthsync.audit import record_phi_access
from healthsync.choices import OPEN_EXCEPTION_STATUSES, ExceptionStatus
from healthsync.models import ExceptionItem
from healthsync.registry import connector_registry
from healthsync.views import paginate, querystring_without_page, render_htmx
from workflows.definitions import EXCEPTION_SLA
from workflows.forms import (
    ALL_STATUSES,
    SORTS,
    UNRESOLVED,
    AssignForm,
    BulkForm,
    CommentForm,
    ExceptionFilterForm,
    FixForm,
    IgnoreForm,
    ResolveForm,
    RouteBackForm,
)
from workflows.models import WorkflowRun

logger = logging.getLogger(__name__)

DETAIL_TEMPLATE = "workflows/exception_detail.html"
LIST_TEMPLATE = "workflows/exception_list.html"
MASK = "••••••"


# Queue ------------------------------------------------------------------------------------------------


def _filtered(request: HttpRequest, values: dict[str, str], *, with_status: bool = True) -> QuerySet:
    items = ExceptionItem.objects.select_related("assignee")
    if with_status and values["status"] == UNRESOLVED:
        items = items.filter(status__in=OPEN_EXCEPTION_STATUSES)
    elif with_status and values["status"] != ALL_STATUSES:
        items = items.filter(status=values["status"])
    if values["kind"]:
        items = items.filter(kind=values["kind"])
    if values["assignee"] == "me":
        items = items.filter(assignee=request.user)
    elif values["assignee"] == "none":
        items = items.filter(assignee__isnull=True)
    elif values["assignee"]:
        items = items.filter(assignee_id=values["assignee"])
    if values["q"]:
        items = items.filter(business_key__icontains=values["q"].strip())
    if values.get("facility"):
        items = items.filter(facility=values["facility"])
    if values.get("payer"):
        items = items.filter(payer__icontains=values["payer"].strip())
    if values.get("age"):
        items = items.filter(created_at__lt=timezone.now() - timedelta(days=int(values["age"])))
    if values.get("min_amount"):
        items = items.filter(amount__gte=Decimal(values["min_amount"]))
    return items


def _ordered(items: QuerySet, sort: str) -> QuerySet:
    if sort == "due":
        # An explicit due time first, soonest first; the rest by age (NULLs last on every database).
        return items.order_by(F("sla_due_at").asc(nulls_last=True), "created_at", "id")
    return items.order_by(*SORTS[sort])


def sla_state(item: ExceptionItem, now: Any = None) -> str:
    """ok, due-soon (under a quarter of the allowance left) or late, for the queue's SLA colours."""
    if not item.is_open:
        return "closed"
    now = now or timezone.now()
    allowance = EXCEPTION_SLA.get(item.kind, timedelta(days=1))
    due = item.sla_due_at or item.created_at + allowance
    if now >= due:
        return "late"
    if due - now < allowance / 4:
        return "due-soon"
    return "ok"


def _status_counts(request: HttpRequest, values: dict[str, str]) -> list[dict[str, Any]]:
    counts = dict(
        _filtered(request, values, with_status=False).order_by().values_list("status").annotate(n=Count("id"))
    )
    params = request.GET.copy()
    params.pop("page", None)
    rows = []
    for status, label in ExceptionStatus.choices:
        params["status"] = status
        rows.append(
            {
                "status": status,
                "label": label,
                "count": counts.get(status, 0),
                "query": params.urlencode(),
                "current": values["status"] == status,
            }
        )
    return rows


@login_required
@permission_required("healthsync.view_exceptionitem", raise_exception=True)
@require_GET
def exception_list(request: HttpRequest) -> HttpResponse:
    form = ExceptionFilterForm(request.GET or None)
    values = form.cleaned_or_default()
    if not request.GET:
        form = ExceptionFilterForm(initial=values)
    items = _ordered(_filtered(request, values), values["sort"])
    page = paginate(request, items)
    page.object_list = list(page.object_list)
    now = timezone.now()
    for item in page.object_list:
        item.sla_state = sla_state(item, now)
    context = {
        "form": form,
        "values": values,
        "page": page,
        "bulk_form": BulkForm(),
        "querystring": querystring_without_page(request),
        "status_counts": _status_counts(request, values),
    }
    return render_htmx(request, LIST_TEMPLATE, "results", context)


@login_required
@permission_required("healthsync.view_exceptionitem", raise_exception=True)
@require_GET
def exception_counts(request: HttpRequest) -> HttpResponse:
    """Counts per status for the current filters; the queue polls this."""
    values = ExceptionFilterForm(request.GET or None).cleaned_or_default()
    response = render(
        request, f"{LIST_TEMPLATE}#status-counts", {"status_counts": _status_counts(request, values)}
    )
    patch_vary_headers(response, ("HX-Request",))
    return response


# One exception ---------------------------------------------------------------------------------------


def _get_exception_for_user(request: HttpRequest, pk: int) -> ExceptionItem:
    # Every role with the queue permission works the whole queue; 404 rather than 403 for unknown ids.
    return get_object_or_404(
        ExceptionItem.objects.select_related(
            "assignee", "resolved_by", "message__connector", "event", "delivery__connector"
        ),
        pk=pk,
    )


@dataclass(frozen=True)
class PatientIdentity:
    """Who the exception is about; PHI, shown only to roles that may see it."""

    name: str = ""
    mrn: str = ""

    def __bool__(self) -> bool:
        return bool(self.name or self.mrn)


def _run_for(exception: ExceptionItem) -> WorkflowRun | None:
    if not exception.business_key:
        return None
    runs = WorkflowRun.objects.filter(business_key=exception.business_key)
    if exception.workflow:
        runs = runs.filter(workflow=exception.workflow)
    return runs.order_by("-started_at").first()


def _first(mapping: dict[str, Any], *paths: str) -> str:
    for path in paths:
        value: Any = mapping
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value:
            return str(value)
    return ""


def patient_identity(exception: ExceptionItem, run: WorkflowRun | None) -> PatientIdentity:
    """Patient name and MRN from the run's gathered context, else from the source message's PID segment."""
    context = run.context if run is not None and isinstance(run.context, dict) else {}
    name = _first(context, "patient_name", "patient.name", "name")
    mrn = _first(context, "mrn", "patient.mrn", "patient_mrn")
    if (not name or not mrn) and exception.message is not None:
        try:
            parsed = connector_registry.get(exception.message.connector.protocol).parse(
                bytes(exception.message.raw)
            )
            family, given = parsed.get("PID-5.1"), parsed.get("PID-5.2")
            name = name or ", ".join(part for part in (family, given) if part)
            mrn = mrn or parsed.get("PID-3.1")
        except Exception:
            # An unparseable message simply has no identity to show; its id, never its content, is logged.
            logger.info(
                "exception %s: source message %s not parseable for identity",
                exception.pk,
                exception.message_id,
            )
    return PatientIdentity(name=name, mrn=mrn)


def _action_forms(
    exception: ExceptionItem, bound: dict[str, forms.Form] | None = None
) -> dict[str, forms.Form]:
    fix_fields = (exception.detail or {}).get("fix_fields") or []
    action_forms: dict[str, forms.Form] = {
        "assign": AssignForm(prefix="assign"),
        "comment": CommentForm(prefix="comment"),
        "resolve": ResolveForm(prefix="resolve"),
        "ignore": IgnoreForm(prefix="ignore"),
        "resubmit": FixForm(prefix="fix", fix_fields=fix_fields if isinstance(fix_fields, list) else []),
        "route_back": RouteBackForm(prefix="route"),
    }
    action_forms.update(bound or {})
    return action_forms


def _workspace_context(
    request: HttpRequest, exception: ExceptionItem, bound: dict[str, forms.Form] | None = None
) -> dict[str, Any]:
    return {
        "exception": exception,
        "comments": exception.comments.select_related("author"),
        "can_work": request.user.has_perm("healthsync.work_exceptionitem"),
        "can_view_messages": request.user.has_perm("healthsync.view_message"),
        "forms": _action_forms(exception, bound),
        "action_errors": [error for form in (bound or {}).values() for error in form.non_field_errors()],
    }


def _render_detail(
    request: HttpRequest,
    exception: ExceptionItem,
    bound: dict[str, forms.Form] | None = None,
    *,
    status: int = 200,
) -> HttpResponse:
    context = _workspace_context(request, exception, bound)
    context["run"] = _run_for(exception)
    if request.htmx:
        # Action results swap the workspace only; it holds no PHI, so no access is recorded for it.
        response = render(request, f"{DETAIL_TEMPLATE}#workspace", context, status=status)
        patch_vary_headers(response, ("HX-Request",))
        return response
    run = _run_for(exception)
    can_view_phi = request.user.has_perm("healthsync.view_phi")
    identity = patient_identity(exception, run)
    if can_view_phi and identity:
        record_phi_access(exception)
    context.update(
        {
            "run": run,
            "can_view_phi": can_view_phi,
            "identity": identity,
            "mask": MASK,
        }
    )
    response = render(request, DETAIL_TEMPLATE, context, status=status)
    patch_vary_headers(response, ("HX-Request",))
    return response


@login_required
@permission_required("healthsync.view_exceptionitem", raise_exception=True)
@require_GET
def exception_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _render_detail(request, _get_exception_for_user(request, pk))


# Actions ----------------------------------------------------------------------------------------------

ActionCall = Callable[[HttpRequest, ExceptionItem, forms.Form], None]


def _assign(request: HttpRequest, exception: ExceptionItem, form: forms.Form) -> None:
    services.exception_assign(exception=exception, assignee=form.cleaned_data["assignee"], actor=request.user)


def _comment(request: HttpRequest, exception: ExceptionItem, form: forms.Form) -> None:
    services.exception_comment(exception=exception, body=form.cleaned_data["body"], actor=request.user)


def _resolve(request: HttpRequest, exception: ExceptionItem, form: forms.Form) -> None:
    services.exception_resolve(exception=exception, note=form.cleaned_data["note"], actor=request.user)


def _ignore(request: HttpRequest, exception: ExceptionItem, form: forms.Form) -> None:
    services.exception_ignore(exception=exception, reason=form.cleaned_data["reason"], actor=request.user)


def _retry(request: HttpRequest, exception: ExceptionItem, form: forms.Form) -> None:
    services.exception_retry(exception=exception, actor=request.user)


def _resubmit(request: HttpRequest, exception: ExceptionItem, form: forms.Form) -> None:
    services.exception_retry(exception=exception, actor=request.user, fixes=form.fixes())


def _route_back(request: HttpRequest, exception: ExceptionItem, form: forms.Form) -> None:
    services.exception_route_back(
        exception=exception,
        queue=form.cleaned_data["queue"],
        note=form.cleaned_data["note"],
        actor=request.user,
    )


def _replay(request: HttpRequest, exception: ExceptionItem, form: forms.Form) -> None:
    services.exception_replay(exception=exception, actor=request.user)


# action → (form key in the page, success message, service call); "retry" has no fields of its own.
ACTIONS: dict[str, tuple[str | None, str, ActionCall]] = {
    "assign": ("assign", "Exception assigned.", _assign),
    "comment": ("comment", "Comment added.", _comment),
    "resolve": ("resolve", "Exception resolved.", _resolve),
    "ignore": ("ignore", "Exception ignored.", _ignore),
    "retry": (None, "Retry requested.", _retry),
    "resubmit": ("resubmit", "Fixed data resubmitted.", _resubmit),
    "route_back": ("route_back", "Routed back to the work queue.", _route_back),
    "replay": (None, "Source message replayed.", _replay),
}


def _bind(action_key: str | None, exception: ExceptionItem, data: Any) -> forms.Form:
    if action_key is None:
        return forms.Form(data)
    unbound = _action_forms(exception)[action_key]
    if isinstance(unbound, FixForm):
        fix_fields = (exception.detail or {}).get("fix_fields") or []
        return FixForm(data, prefix="fix", fix_fields=fix_fields if isinstance(fix_fields, list) else [])
    return unbound.__class__(data, prefix=unbound.prefix)


@login_required
@permission_required("healthsync.work_exceptionitem", raise_exception=True)
@require_POST
def exception_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Run one recovery action; htmx gets the updated workspace back, a plain form post a redirect."""
    if action not in ACTIONS:
        raise Http404("Unknown action")
    exception = _get_exception_for_user(request, pk)
    form_key, success, call = ACTIONS[action]
    form = _bind(form_key, exception, request.POST)
    if form.is_valid():
        try:
            call(request, exception, form)
        except ValidationError as error:
            form.add_error(None, error.messages)
    bound = {form_key: form} if form_key else {}
    if not form.is_valid():
        if form_key is None:
            bound = {"retry": form}
        return _render_detail(request, exception, bound, status=400)
    exception.refresh_from_db()
    if request.htmx:
        response = _render_detail(request, exception)
        response["HX-Trigger"] = "exception-changed"
        return response
    messages.success(request, success)
    return redirect("exception_detail", pk=exception.pk)


@login_required
@permission_required("healthsync.work_exceptionitem", raise_exception=True)
@require_POST
def exception_bulk(request: HttpRequest) -> HttpResponse:
    """Assign, retry or close the ticked exceptions; each one in its own transaction."""
    form = BulkForm(request.POST)
    back = request.POST.get("next") or ""
    if not back.startswith("/exceptions/"):
        back = "/exceptions/"
    if not form.is_valid():
        for field, errors in form.errors.items():
            for error in errors:
                messages.error(
                    request, error if field == "__all__" else f"{form.fields[field].label or field}: {error}"
                )
        return redirect(back)
    data = form.cleaned_data
    items = list(ExceptionItem.objects.filter(pk__in=data["ids"]))
    action, kwargs = data["action"], {}
    if action == "assign_me":
        action, kwargs = "assign", {"assignee": request.user}
    elif action == "assign":
        kwargs = {"assignee": data["assignee"]}
    elif action == "resolve":
        kwargs = {"note": data["note"]}
    elif action == "ignore":
        kwargs = {"reason": data["note"]}
    result = services.exception_bulk(action=action, exceptions=items, actor=request.user, **kwargs)
    text = f"{result['done']} exception{'s' if result['done'] != 1 else ''} updated"
    if result["skipped"]:
        text += f", {result['skipped']} skipped (already closed)"
    messages.success(request, text + ".")
    return redirect(back)
