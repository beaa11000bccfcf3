"""Audit trail: every configuration model is versioned by django-auditlog; PHI reads are logged too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from auditlog.receivers import log_access
from auditlog.registry import auditlog

if TYPE_CHECKING:
    from django.db.models import Model


def register_models() -> None:
    from healthsync import models

    for model in (
        models.System,
        models.MappingSet,
        models.MappingVersion,
        models.MappingRule,
        models.SchemaVersion,
        models.DataOwnership,
    ):
        auditlog.register(model)
    auditlog.register(
        models.Connector,
        # Breaker counters change on every failed delivery: runtime state, not configuration.
        exclude_fields=[
            "consecutive_failures",
            "breaker_open_until",
            "breaker_opened_at",
            "breaker_trips",
            "updated_at",
        ],
        # Only the fact that credentials changed is recorded, never the token or any part of it.
        mask_fields=["secrets_token"],
        mask_callable="healthsync.secrets.mask_secret",
    )
    auditlog.register(models.ApiClient, exclude_fields=["last_used_at"])
    auditlog.register(models.ExceptionItem, exclude_fields=["updated_at"])


def record_phi_access(instance: Model) -> None:
    """Write an access row to the audit log: who opened which record holding PHI, and when.

    Called directly rather than through auditlog's `accessed` signal so that models on the hot path
    (the message store) need not be registered for change tracking.
    """
    log_access(sender=instance.__class__, instance=instance)
