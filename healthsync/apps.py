from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(**kwargs: Any) -> None:
    from healthsync.roles import sync_roles

    sync_roles()


class HealthSyncConfig(AppConfig):
    name = "healthsync"
    verbose_name = "HealthSync core"

    def ready(self) -> None:
        from healthsync import audit

        audit.register_models()
        # Role groups are kept equal to healthsync/roles.py after every migrate, on every database.
        post_migrate.connect(_sync_roles, sender=self, dispatch_uid="healthsync.sync_roles")
