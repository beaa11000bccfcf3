"""API governance: the systems and scripts that call the REST API, their tokens, scopes and usage."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from healthsync.models.core import System


class ApiClient(models.Model):
    """One consuming system or script: its own token, the scopes it may use and its rate limit.

    A client acts with its owner's role permissions, narrowed further by its scopes; the token itself is
    stored only as a SHA-256 digest and shown once, when it is issued.
    """

    name = models.CharField(max_length=120, unique=True)
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="api_clients")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="api_clients",
        help_text="The accountable person; the client acts with this user's role permissions.",
    )
    scopes = models.JSONField(default=list, blank=True, help_text="e.g. messages:read, exceptions:write.")
    rate_limit_per_minute = models.PositiveIntegerField(default=120)
    is_active = models.BooleanField(default=True)
    # The prefix identifies a token in lists and logs without revealing it; the digest authenticates it.
    token_prefix = models.CharField(max_length=16, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])


class ApiUsage(models.Model):
    """Calls, errors and latency of one API client in one minute (the usage rollup)."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="usage")
    minute = models.DateTimeField()
    calls = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    latency_ms_total = models.FloatField(default=0)
    latency_ms_max = models.FloatField(default=0)

    class Meta:
        ordering = ["-minute"]
        constraints = [models.UniqueConstraint(fields=["client", "minute"], name="api_usage_per_minute")]

    def __str__(self) -> str:
        return f"{self.client_id} {self.minute:%Y-%m-%d %H:%M}"

    @property
    def latency_ms_avg(self) -> float:
        return self.latency_ms_total / self.calls if self.calls else 0.0
