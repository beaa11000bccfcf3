"""Console page /api-clients/: register API clients, issue and rotate their tokens, watch their usage."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from healthsync.api.tokens import (
    MAX_RATE_LIMIT,
    api_client_create,
    api_client_rotate_token,
    api_client_set_active,
)
from healthsync.api.usage import usage_summary
from healthsync.choices import ApiScope
from healthsync.models import ApiClient, ApiUsage, System

TEMPLATE = "api/api_clients.html"


class ApiClientForm(forms.Form):
    """Register a consuming system; the token is issued on save and shown once."""

    name = forms.CharField(max_length=120)
    system = forms.ModelChoiceField(queryset=System.objects.filter(is_active=True))
    owner = forms.ModelChoiceField(
        queryset=User.objects.filter(is_active=True).order_by("username"),
        help_text="Accountable person; the client acts with this user's role permissions.",
    )
    scopes = forms.MultipleChoiceField(choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple)
    rate_limit_per_minute = forms.IntegerField(min_value=1, max_value=MAX_RATE_LIMIT, initial=120)


def _page(request: HttpRequest, form: ApiClientForm, *, token: str = "", status: int = 200) -> HttpResponse:
    now = timezone.now()
    last_hour = usage_summary(since=now - timedelta(hours=1))
    last_day = usage_summary(since=now - timedelta(days=1))
    clients = list(ApiClient.objects.select_related("system", "owner"))
    rows = [
        {"client": client, "hour": last_hour.get(client.pk), "day": last_day.get(client.pk)}
        for client in clients
    ]
    recent = ApiUsage.objects.select_related("client").filter(minute__gte=now - timedelta(hours=1))[:60]
    context = {"rows": rows, "recent": recent, "form": form, "token": token}
    return render(request, TEMPLATE, context, status=status)


@login_required
@permission_required("healthsync.view_apiclient", raise_exception=True)
@require_http_methods(["GET", "POST"])
def api_client_list(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _page(request, ApiClientForm())
    if not request.user.has_perm("healthsync.add_apiclient"):
        return HttpResponse("You are not allowed to register API clients.", status=403)
    form = ApiClientForm(request.POST)
    if not form.is_valid():
        return _page(request, form, status=400)
    data = form.cleaned_data
    try:
        client, token = api_client_create(
            name=data["name"],
            system=data["system"],
            owner=data["owner"],
            scopes=data["scopes"],
            rate_limit_per_minute=data["rate_limit_per_minute"],
            actor=request.user,
        )
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
        return _page(request, form, status=400)
    messages.success(
        request, f"API client {client.name} registered. Copy its token now: it is not shown again."
    )
    # The token is rendered into this one response and stored nowhere in plain text.
    return _page(request, ApiClientForm(), token=token)


@login_required
@permission_required("healthsync.change_apiclient", raise_exception=True)
@require_POST
def api_client_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    client = get_object_or_404(ApiClient, pk=pk)
    if action == "rotate":
        token = api_client_rotate_token(client=client, actor=request.user)
        messages.success(request, f"New token for {client.name}; the old one no longer works. Copy it now.")
        return _page(request, ApiClientForm(), token=token)
    if action in ("deactivate", "activate"):
        api_client_set_active(client=client, active=action == "activate", actor=request.user)
        messages.success(request, f"API client {client.name} {action}d.")
        return redirect("api_client_list")
    return HttpResponse("Unknown action.", status=404)
