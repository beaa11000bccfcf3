"""Template context shared by every console page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from django.urls import reverse


@dataclass(frozen=True)
class Section:
    """A console section in the navigation bar and the permission that opens it."""

    key: str
    label: str
    url_name: str
    permission: str


# Order matters: the home page sends a user to the first section they may open.
SECTIONS: tuple[Section, ...] = (
    Section("dashboard", "Dashboard", "dashboard", "workflows.view_kpis"),
    Section("exceptions", "Exceptions", "exception_list", "healthsync.view_exceptionitem"),
    Section("runs", "Runs", "run_list", "workflows.view_workflowrun"),
    Section("close", "Close", "close_readiness", "workflows.view_workflowrun"),
    Section("messages", "Messages", "message_list", "healthsync.view_message"),
    Section("governance", "Governance", "governance_inbox", "healthsync.view_changerequest"),
    Section("connectors", "Connectors", "connector_list", "healthsync.view_connector"),
    Section("ops", "Operations", "ops_home", "healthsync.view_message"),
    Section("api-clients", "API clients", "api_client_list", "healthsync.view_apiclient"),
)


def sections_for(user: Any) -> list[Section]:
    """The sections `user` may open, in navigation order."""
    if user is None or not user.is_authenticated:
        return []
    return [section for section in SECTIONS if user.has_perm(section.permission)]


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Which console sections the signed-in user may open, for the navigation bar."""
    items = []
    for section in sections_for(getattr(request, "user", None)):
        url = reverse(section.url_name)
        items.append(
            {
                "key": section.key,
                "label": section.label,
                "url": url,
                "active": request.path.startswith(url),
            }
        )
    return {"nav": items}
