"""Operations pages: connector telemetry with breaker state, job runs, and replay (one message or a filter)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from healthsync.alerts import alert_acknowledge, open_alerts
from healthsync.audit import record_phi_access
from healthsync.choices import AlertState, Direction, Lane, MessageStatus
from healthsync.models import (
    Connector,
    ConnectorAlert,
    Message,
    PruneRun,
    ReplayRequest,
    RetentionPolicy,
    SyncJobRun,
)
from healthsync.replay import REPLAYABLE_STATUSES, message_edit_and_replay, message_filter, message_replay
from healthsync.retention import (
    PRUNABLE_STATUSES,
    default_keep_days,
    retention_policy_delete,
    retention_policy_set,
)
from healthsync.telemetry import ops_overview
from healthsync.views import paginate, querystring_without_page, render_htmx


def _destinations_field() -> forms.ModelMultipleChoiceField:
    return forms.ModelMultipleChoiceField(
        queryset=Connector.objects.filter(direction=Direction.OUTBOUND).order_by("code"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every destination. Deliveries that already succeeded are never sent again.",
    )


class ReplayForm(forms.Form):
    """Replay one message: to which destinations and why; engineers who may see PHI may edit it first."""

    destinations = _destinations_field()
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=2000)
    edited_raw = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 12, "class": "raw", "spellcheck": "false"}),
        label="Edited message (optional)",
        help_text="Leave unchanged to replay the message as received; the original is always kept.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["destinations"] = _destinations_field()


class FilteredReplayForm(forms.Form):
    """Pick the messages of a filtered replay (finished ones only) and say why."""

    connector = forms.ModelChoiceField(
        queryset=Connector.objects.filter(direction=Direction.INBOUND).order_by("code"),
        required=False,
        empty_label="Any connector",
    )
    type = forms.CharField(required=False, max_length=40, help_text="e.g. ADT^A03")
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any finished status")]
        + [(s.value, s.label) for s in MessageStatus if s in REPLAYABLE_STATUSES],
    )
    received_from = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    received_to = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    destinations = _destinations_field()
    reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["destinations"] = _destinations_field()

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("received_from"), data.get("received_to")
        if start and end and start >= end:
            raise ValidationError("The time range ends before it starts.")
        return data

    def selection(self) -> Any:
        data = self.cleaned_data
        return message_filter(
            connector=data.get("connector"),
            message_type=data.get("type") or "",
            status=data.get("status") or "",
            received_from=data.get("received_from"),
            received_to=data.get("received_to"),
        )

    def criteria(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "connector": data["connector"].code if data.get("connector") else "",
            "type": data.get("type") or "",
            "status": data.get("status") or "",
            "received_from": data["received_from"].isoformat() if data.get("received_from") else "",
            "received_to": data["received_to"].isoformat() if data.get("received_to") else "",
        }


@login_required
@permission_required("healthsync.view_message", raise_exception=True)
@require_GET
def ops_home(request: HttpRequest) -> HttpResponse:
    """Per connector over the last hour: traffic, errors, retries, queue, latency, breaker, last message."""
    lanes = dict(
        Message.objects.filter(status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING])
        .values("lane")
        .annotate(n=Count("id"))
        .values_list("lane", "n")
    )
    context = {
        "lines": ops_overview(window_minutes=60),
        "lanes": [(label, lanes.get(value, 0)) for value, label in Lane.choices],
        "recent_runs": SyncJobRun.objects.order_by("-created_at")[:5],
        "can_view_jobs": request.user.has_perm("healthsync.view_syncjobrun"),
        "alerts": open_alerts() if request.user.has_perm("healthsync.view_connectoralert") else None,
    }
    return render_htmx(request, "healthsync/ops/overview.html", "connectors", context)


@login_required
@permission_required("healthsync.view_connectoralert", raise_exception=True)
@require_GET
def alert_list(request: HttpRequest) -> HttpResponse:
    """Every alert, newest first, filtered by state: open ones to act on, cleared ones as history."""
    alerts = ConnectorAlert.objects.select_related("connector", "acknowledged_by").order_by(
        "-raised_at", "-id"
    )
    state = request.GET.get("state", "")
    if state in AlertState.values:
        alerts = alerts.filter(state=state)
    context = {
        "page": paginate(request, alerts),
        "state": state,
        "states": AlertState.choices,
        "querystring": querystring_without_page(request),
    }
    return render_htmx(request, "healthsync/ops/alerts.html", "results", context)


@login_required
@permission_required("healthsync.change_connectoralert", raise_exception=True)
@require_POST
def alert_acknowledge_view(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(ConnectorAlert, pk=pk)
    if alert_acknowledge(alert=alert, actor=request.user):
        flash.success(request, f"Alert #{alert.pk} acknowledged.")
    else:
        flash.info(request, f"Alert #{alert.pk} was already acknowledged or has cleared.")
    # Back to the page the button was on (the overview or the list), never to another site.
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect("ops_alert_list")


@login_required
@permission_required("healthsync.view_connectoralert", raise_exception=True)
@require_GET
def alert_badge(request: HttpRequest) -> HttpResponse:
    """The header's open-alert count (loaded by htmx so ordinary pages pay nothing for it)."""
    alerts = open_alerts()
    response = render(request, "healthsync/ops/_alert_badge.html", {"alerts": alerts})
    response["Cache-Control"] = "no-store"
    return response


@login_required
@permission_required("healthsync.view_syncjobrun", raise_exception=True)
@require_GET
def job_runs(request: HttpRequest) -> HttpResponse:
    runs = SyncJobRun.objects.order_by("-created_at", "-id")
    job = request.GET.get("job", "")
    if job:
        runs = runs.filter(job=job)
    context = {
        "page": paginate(request, runs),
        "job": job,
        "jobs": SyncJobRun.objects.values_list("job", flat=True).distinct().order_by("job"),
        "querystring": querystring_without_page(request),
    }
    return render_htmx(request, "healthsync/ops/job_runs.html", "results", context)


@login_required
@permission_required("healthsync.view_syncjobrun", raise_exception=True)
@require_GET
def job_run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render(
        request, "healthsync/ops/job_run_detail.html", {"run": get_object_or_404(SyncJobRun, pk=pk)}
    )


@login_required
@permission_required("healthsync.view_message", raise_exception=True)
@permission_required("healthsync.replay_message", raise_exception=True)
@require_http_methods(["GET", "POST"])
def message_replay_view(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(Message.objects.select_related("connector"), pk=pk)
    can_edit = request.user.has_perm("healthsync.view_phi")
    original_text = message.raw_text.replace("\r", "\n").strip("\x0b\x1c\n") if can_edit else ""
    form = ReplayForm(request.POST or None, initial={"edited_raw": original_text})
    if not can_edit:
        del form.fields["edited_raw"]
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        edited = (data.get("edited_raw") or "").replace("\r\n", "\n").strip()
        try:
            if can_edit and edited and edited != original_text.replace("\r\n", "\n").strip():
                replay = message_edit_and_replay(
                    message=message, raw=edited.encode(), reason=data["reason"], actor=request.user
                )
            else:
                replay = message_replay(
                    messages=[message],
                    destinations=list(data["destinations"]) or None,
                    reason=data["reason"],
                    actor=request.user,
                )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            flash.success(request, f"Replay #{replay.pk} queued: {replay.message_count} message(s).")
            return redirect("ops_replay_detail", pk=replay.pk)
    if can_edit:
        record_phi_access(message)
    return render(
        request,
        "healthsync/ops/message_replay.html",
        {"message": message, "form": form, "can_edit": can_edit},
    )


@login_required
@permission_required("healthsync.view_message", raise_exception=True)
@permission_required("healthsync.replay_message", raise_exception=True)
@require_http_methods(["GET", "POST"])
def filtered_replay(request: HttpRequest) -> HttpResponse:
    """GET previews how many messages a filter takes; POST replays them (a reason is required)."""
    data = request.POST if request.method == "POST" else (request.GET or None)
    form = FilteredReplayForm(data)
    matched: int | None = None
    if form.is_bound and form.is_valid():
        selection = form.selection()
        matched = selection.count()
        if request.method == "POST":
            try:
                replay = message_replay(
                    messages=selection,
                    destinations=list(form.cleaned_data["destinations"]) or None,
                    reason=form.cleaned_data.get("reason") or "",
                    actor=request.user,
                    kind="filtered",
                    criteria=form.criteria(),
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                flash.success(request, f"Replay #{replay.pk} queued: {replay.message_count} message(s).")
                return redirect("ops_replay_detail", pk=replay.pk)
    context = {"form": form, "matched": matched, "recent": ReplayRequest.objects.all()[:10]}
    return render(request, "healthsync/ops/filtered_replay.html", context)


@login_required
@permission_required("healthsync.replay_message", raise_exception=True)
@require_GET
def replay_detail(request: HttpRequest, pk: int) -> HttpResponse:
    replay = get_object_or_404(ReplayRequest, pk=pk)
    items = replay.items.select_related("replay").order_by("id")
    context = {"replay": replay, "page": paginate(request, items), "querystring": ""}
    return render_htmx(request, "healthsync/ops/replay_detail.html", "items", context)


class RetentionForm(forms.Form):
    """One retention setting: for a connector (or any) and a status (or any), keep this many days."""

    connector = forms.ModelChoiceField(
        queryset=Connector.objects.order_by("code"), required=False, empty_label="Any connector"
    )
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any status")] + [(s.value, s.label) for s in MessageStatus if s in PRUNABLE_STATUSES],
    )
    keep_days = forms.IntegerField(min_value=1, max_value=36500)
    note = forms.CharField(required=False, max_length=200)


@login_required
@permission_required("healthsync.view_retentionpolicy", raise_exception=True)
@require_http_methods(["GET", "POST"])
def retention(request: HttpRequest) -> HttpResponse:
    """Retention settings (most specific wins) and what the pruner did lately."""
    form = RetentionForm(request.POST if request.method == "POST" and "delete" not in request.POST else None)
    if request.method == "POST":
        if not request.user.has_perm("healthsync.change_retentionpolicy"):
            raise PermissionDenied("You are not allowed to change retention.")
        if "delete" in request.POST:
            policy = get_object_or_404(RetentionPolicy, pk=request.POST.get("delete"))
            retention_policy_delete(policy=policy, actor=request.user)
            flash.success(request, "Retention setting removed.")
            return redirect("ops_retention")
        if form.is_valid():
            data = form.cleaned_data
            try:
                retention_policy_set(
                    connector=data["connector"],
                    status=data["status"],
                    keep_days=data["keep_days"],
                    note=data["note"],
                    actor=request.user,
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                flash.success(request, "Retention saved.")
                return redirect("ops_retention")
    context = {
        "form": form,
        "policies": RetentionPolicy.objects.select_related("connector"),
        "default_days": default_keep_days(),
        "runs": PruneRun.objects.all()[:10],
        "can_change": request.user.has_perm("healthsync.change_retentionpolicy"),
    }
    return render(request, "healthsync/ops/retention.html", context)
