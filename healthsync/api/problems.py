"""RFC 9457 problem details for every API error, and their place in the OpenAPI schema."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler, set_rollback

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Problem types are relative URI references (RFC 9457 §3.1.1), documented in docs/api.md.
TYPE_BASE = "/api/problems/"


def problem(status: int, detail: str, *, type_: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"{TYPE_BASE}{type_}" if type_ else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return body


def _field_errors(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """Flatten DRF's nested error detail into [{field, code, detail}], fields as dotted paths."""
    errors: list[dict[str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            errors += _field_errors(value, f"{prefix}.{name}" if prefix and name else prefix or name)
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            nested = isinstance(value, dict | list)
            errors += _field_errors(value, f"{prefix}.{index}" if nested else prefix)
    else:
        errors.append(
            {"field": prefix, "code": str(getattr(detail, "code", "invalid")), "detail": str(detail)}
        )
    return errors


def _slug(exc: exceptions.APIException) -> str:
    return str(getattr(exc, "default_code", "error")).replace("_", "-")


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's handler, reshaped as problem details; anything it does not know becomes a logged 500."""
    if isinstance(exc, DjangoValidationError):
        # Services raise Django's ValidationError for broken business rules: a 400 with the reasons.
        exc = exceptions.ValidationError(detail=as_serializer_error(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None:
        view = context.get("view")
        logger.exception("API error in %s", view.__class__.__name__ if view else "an API view")
        set_rollback()
        response = Response(
            problem(
                500,
                "The server failed to answer this request; the error has been logged.",
                type_="server-error",
            ),
            status=500,
        )
    elif isinstance(exc, exceptions.ValidationError):
        errors = _field_errors(exc.detail)
        detail = errors[0]["detail"] if len(errors) == 1 else f"The request has {len(errors)} errors."
        response.data = problem(response.status_code, detail, type_="validation-error", errors=errors)
    else:
        assert isinstance(exc, exceptions.APIException)
        data = response.data if isinstance(response.data, dict) else {}
        detail = str(data.get("detail") or exc.detail)
        extra: dict[str, Any] = {}
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            extra["retry_after"] = int(exc.wait)
        response.data = problem(response.status_code, detail, type_=_slug(exc), **extra)
    response.content_type = PROBLEM_MEDIA_TYPE
    return response


def problem_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Unknown paths under /api/ answer with a problem too, not the console's HTML 404 page."""
    return JsonResponse(
        problem(
            404, "No API endpoint at this path. See /api/schema/ for the ones there are.", type_="not-found"
        ),
        status=404,
        content_type=PROBLEM_MEDIA_TYPE,
    )


_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "code": {"type": "string"},
                    "detail": {"type": "string"},
                },
                "required": ["field", "code", "detail"],
            },
        },
        "retry_after": {"type": "integer"},
    },
    "required": ["type", "title", "status", "detail"],
}

_DOCUMENTED = {
    "400": "Invalid input: the errors list names each field.",
    "401": "No credentials, or a token that is unknown, rotated or revoked.",
    "403": "The role or the API client's scopes do not allow this.",
    "404": "No such object.",
    "429": "The API client's rate limit is used up; retry after Retry-After seconds.",
    "default": "Any other error, as problem details.",
}


def add_problem_responses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every operation documents its problem responses."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = _PROBLEM_SCHEMA
    ref = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in _DOCUMENTED.items():
                responses.setdefault(status, {"description": description, "content": ref})
    return result
