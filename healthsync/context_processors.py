from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Which console sections the signed-in user may open, for the navigation bar."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": {}}
    return {
        "nav": {
            "dashboard": user.has_perm("workflows.view_kpis"),
            "exceptions": user.has_perm("healthsync.view_exceptionitem"),
            "messages": user.has_perm("healthsync.view_message"),
        }
    }
