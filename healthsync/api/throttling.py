"""Per-client rate limit: a fixed one-minute window counted in the usage rollup, so every process agrees."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from healthsync.api.usage import usage_count_call
from healthsync.models import ApiClient

COUNTED = "_healthsync_api_counted"


class ApiClientRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        client = request.auth
        if not isinstance(client, ApiClient):
            return True
        now = timezone.now()
        calls = usage_count_call(client=client, now=now)
        setattr(request._request, COUNTED, True)
        if calls <= client.rate_limit_per_minute:
            return True
        self._wait = 60 - now.second - now.microsecond / 1_000_000
        return False

    def wait(self) -> float | None:
        return self._wait
