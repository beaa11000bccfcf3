"""What every API view shares: usage recording, pagination bounds, PHI masking helpers."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response

from healthsync.api.throttling import COUNTED
from healthsync.api.usage import usage_record
from healthsync.models import ApiClient

PHI_PERMISSION = "healthsync.view_phi"
MAX_ID = 2**63 - 1


def can_view_phi(request: Request) -> bool:
    return bool(request.user and request.user.has_perm(PHI_PERMISSION))


class ApiPagination(LimitOffsetPagination):
    """limit/offset pages; both bounded so no query asks the database for an absurd window."""

    default_limit = 50
    max_limit = 500
    max_offset = 10_000_000

    def get_offset(self, request: Request) -> int:
        return min(super().get_offset(request), self.max_offset)


@extend_schema_field(OpenApiTypes.INT)
class IdFilter(filters.NumberFilter):
    """A foreign-key id: an integer within the database's range (not the decimal NumberFilter takes)."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, normalised to UTC: PostgreSQL refuses offsets beyond ±15:59 (RFC 3339 allows them)."""

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("This date-time is out of range.", code="invalid") from None


class DateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class ApiViewMixin:
    """Times every call and adds it to the calling API client's usage rollup."""

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        self._started = time.perf_counter()
        return super().initialize_request(request, *args, **kwargs)  # type: ignore[misc]

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        # Read the private attribute: touching request.auth here would authenticate a request that
        # failed before authentication, and could raise inside the error path.
        client = getattr(request, "_auth", None)
        # A request whose transaction broke cannot write; its usage is lost rather than its answer.
        if isinstance(client, ApiClient) and not transaction.get_connection().needs_rollback:
            usage_record(
                client=client,
                now=timezone.now(),
                latency_ms=(time.perf_counter() - self._started) * 1000,
                error=response.status_code >= 400,
                counted=bool(getattr(request._request, COUNTED, False)),
            )
        return response
