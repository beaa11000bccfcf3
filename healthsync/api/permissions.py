"""Who may call what: the caller's role permissions (as in the UI) and, for API clients, the client's scopes."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission, DjangoModelPermissions
from rest_framework.request import Request

from healthsync.models import ApiClient


class RolePermission(DjangoModelPermissions):
    """Model permissions, with reads needing view_<model>; extra actions name their own permissions.

    A view may set `required_permissions` (for views without a queryset) or
    `action_permissions = {"replay": ["healthsync.replay_message"]}` for its extra actions.
    """

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if not hasattr(view, request.method.lower()):
            # Let the view answer 405: a method that does not exist is not a permission question.
            return True
        extra = getattr(view, "action_permissions", {}).get(getattr(view, "action", None))
        if extra is not None:
            return request.user.has_perms(extra)
        required = getattr(view, "required_permissions", None)
        if required is not None:
            return request.user.has_perms(required)
        return super().has_permission(request, view)


def required_scope(request: Request, view: Any) -> str:
    action = getattr(view, "action", None)
    overrides = getattr(view, "action_scopes", {})
    if action in overrides:
        return overrides[action]
    suffix = "read" if request.method in SAFE_METHODS else "write"
    return f"{view.scope}:{suffix}"


class HasScope(BasePermission):
    """An API client must hold the endpoint's scope; a browser session is bounded by its role alone."""

    message = "This API client lacks the scope this endpoint needs."

    def has_permission(self, request: Request, view: Any) -> bool:
        client = request.auth
        if not isinstance(client, ApiClient) or not hasattr(view, request.method.lower()):
            return True
        scope = required_scope(request, view)
        if client.has_scope(scope):
            return True
        self.message = f"This API client lacks the {scope} scope."
        return False
