"""Audit trail: every configuration model is versioned by django-auditlog; PHI reads are logged too."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from auditlog import get_logentry_model
from auditlog.context import auditlog_disabled, auditlog_value, set_extra_data
from auditlog.diff import model_instance_diff
from auditlog.receivers import log_access, log_create
from auditlog.registry import auditlog
from auditlog.signals import post_log, pre_log
from django.conf import settings
from django.db.models.signals import post_save, pre_save

from healthsync.inserts import insert_many, send_created

if TYPE_CHECKING:
    from django.db.models import Model


@contextlib.contextmanager
def acting_as(actor: Any, *, additional_data: dict[str, Any] | None = None) -> Iterator[None]:
    """Attribute every audit row written inside to `actor` (and `additional_data`).

    Use this, not auditlog's `set_actor`: auditlog's context does not put back an outer one (the request
    middleware's), so nested in it the outer context's signal receiver is never disconnected, and one more is
    left behind, for the life of the process, on every call. This one restores the outer context.
    """
    previous = auditlog_value.get(None)
    extra: dict[str, Any] = {"actor": actor}
    if additional_data:
        extra["additional_data"] = additional_data
    try:
        with set_extra_data(extra):
            yield
    finally:
        if previous is not None:
            auditlog_value.set(previous)


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


def send_created_many(objs: Sequence[Model]) -> None:
    """Tell post_save receivers about rows of one model inserted without `save()`, as `send_created` does each.

    When auditlog's create receiver is the only one, its entries are made by its own code (the diff, then
    `log_create`'s fields) and written in one statement instead of one INSERT each. Whatever would make
    auditlog write differently than that (auditlog disabled, pre_log/post_log receivers, receivers of the
    entries' own save, such as an actor context's) sends the signal per row instead.
    """
    if not objs:
        return
    model = objs[0].__class__
    if not _only_auditlog_creates(model):
        for obj in objs:
            send_created(obj)
        return
    action = get_logentry_model().Action.CREATE
    use_json = settings.AUDITLOG_STORE_JSON_CHANGES
    manager = _unsaved_entries()
    entries = []
    for obj in objs:
        changes = model_instance_diff(None, obj, use_json_for_changes=use_json)
        # As auditlog's receiver: a create with nothing to record has no entry.
        if changes:
            entries.append(manager.log_create(obj, action=action, changes=changes))
    insert_many(entries)


def _only_auditlog_creates(model: type[Model]) -> bool:
    log_entry = get_logentry_model()
    receivers, async_receivers = post_save._live_receivers(model)
    return (
        receivers == [log_create]
        and not async_receivers
        and not auditlog_disabled.get()
        and not pre_log.has_listeners(model)
        and not post_log.has_listeners(model)
        and not pre_save.has_listeners(log_entry)
        and not post_save.has_listeners(log_entry)
    )


@functools.cache
def _unsaved_entries() -> Any:
    """auditlog's own entry manager, whose `create()` (the last step of `log_create`) leaves the entry unsaved."""
    log_entry = get_logentry_model()

    class UnsavedEntries(type(log_entry.objects)):  # type: ignore[misc]
        def create(self, **kwargs: Any) -> Model:
            return self.model(**kwargs)

    manager = UnsavedEntries()
    manager.model = log_entry
    return manager
