"""Console pages of the core: home and the message store; plus the htmx rendering helper every app uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from healthsync.audit import record_phi_access
from healthsync.context_processors import sections_for
from healthsync.forms import MessageFilterForm
from healthsync.models import CanonicalEvent, Delivery, Message
from healthsync.registry import connector_registry

PAGE_SIZE = 25


def render_htmx(
    request: HttpRequest, template: str, partial: str, context: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    """Render the whole page, or only `partial` of it when htmx asks; caches must key on HX-Request."""
    name = f"{template}#{partial}" if getattr(request, "htmx", False) else template
    response = render(request, name, context, status=status)
    patch_vary_headers(response, ("HX-Request",))
    return response


def paginate(request: HttpRequest, queryset: QuerySet, per_page: int = PAGE_SIZE) -> Page:
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def querystring_without_page(request: HttpRequest) -> str:
    params = request.GET.copy()
    params.pop("page", None)
    return params.urlencode()


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Send the user to the first console section their role opens."""
    sections = sections_for(request.user)
    if not sections:
        raise PermissionDenied("Your account has no console role yet. Ask an administrator for one.")
    return redirect(reverse(sections[0].url_name))


# Messages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedSegment:
    """One segment of a parsed message, as rows of (field path, value) for the fields table."""

    name: str
    fields: list[tuple[str, str]]


def parse_for_display(message: Message) -> tuple[list[ParsedSegment], str]:
    """Parse the raw message with its connector's adapter; returns (segments, error text)."""
    try:
        adapter = connector_registry.get(message.connector.protocol)
    except KeyError:
        return [], f"No adapter is registered for {message.connector.protocol!r}."
    try:
        parsed = adapter.parse(bytes(message.raw))
    except Exception as exc:  # a message that cannot be parsed is still shown raw, with the reason
        return [], getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    segments: list[ParsedSegment] = []
    counts: dict[str, int] = {}
    for fields in getattr(parsed, "segments", []):
        name = fields[0]
        counts[name] = counts.get(name, 0) + 1
        label = name if counts[name] == 1 else f"{name}[{counts[name]}]"
        rows = [(f"{label}-{index}", value) for index, value in enumerate(fields[1:], start=1) if value != ""]
        segments.append(ParsedSegment(name=label, fields=rows))
    return segments, ""


def _get_message_for_user(request: HttpRequest, pk: int) -> Message:
    # Every role that may view messages sees every connector's messages; the 404 keeps ids unguessable.
    return get_object_or_404(Message.objects.select_related("connector__system"), pk=pk)


@login_required
@permission_required("healthsync.view_message", raise_exception=True)
@require_GET
def message_list(request: HttpRequest) -> HttpResponse:
    form = MessageFilterForm(request.GET or None)
    messages = Message.objects.select_related("connector").defer("raw")
    if form.is_valid():
        data = form.cleaned_data
        if data["status"]:
            messages = messages.filter(status=data["status"])
        if data["type"]:
            messages = messages.filter(message_type__icontains=data["type"].strip())
        if data["connector"]:
            messages = messages.filter(connector=data["connector"])
        if data["q"]:
            messages = messages.filter(control_id__icontains=data["q"].strip())
    context = {
        "form": form,
        "page": paginate(request, messages.order_by("-id")),
        "querystring": querystring_without_page(request),
    }
    return render_htmx(request, "healthsync/message_list.html", "results", context)


@login_required
@permission_required("healthsync.view_message", raise_exception=True)
@require_GET
def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    message = _get_message_for_user(request, pk)
    can_view_phi = request.user.has_perm("healthsync.view_phi")
    segments: list[ParsedSegment] = []
    parse_error = ""
    raw_lines: list[str] = []
    if can_view_phi:
        raw_lines = [line for line in message.raw_text.replace("\r\n", "\r").replace("\n", "\r").split("\r")]
        segments, parse_error = parse_for_display(message)
        record_phi_access(message)
    events = (
        CanonicalEvent.objects.filter(message=message)
        .select_related("mapping_version__mapping_set", "schema_version")
        .order_by("recorded_at")
    )
    deliveries = (
        Delivery.objects.filter(event__message=message).select_related("connector", "event").order_by("id")
    )
    context = {
        "message": message,
        "can_view_phi": can_view_phi,
        "raw_lines": [line for line in raw_lines if line.strip("\x0b\x1c ")],
        "segments": segments,
        "parse_error": parse_error,
        "events": events,
        "deliveries": deliveries,
    }
    return render_htmx(request, "healthsync/message_detail.html", "body", context)
