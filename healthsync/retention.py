"""Retention: delete what is past its keep time, in small batches, without ever holding up ingest.

Policies are per connector and/or per message status (RetentionPolicy); the most specific one wins:
(connector, status) > (connector, any status) > (any connector, status) > (any, any) > the setting
HEALTHSYNC_RETENTION_DAYS. Failed, rejected and duplicate messages are pruned like any other once past their
retention, except a message an open exception still points at (people are working it). Messages still
waiting for a worker (received, processing) are never pruned.

Deletes run in short transactions of `batch_size` ids taken in id order, so each one locks a few hundred rows
for milliseconds and the listener's inserts (always the newest ids) never wait behind them. Rows pointing at a
pruned message (events, exceptions, replays, duplicates) keep existing with the link cleared (SET NULL).

On PostgreSQL the design calls for a message store partitioned by received_at so that retention detaches and
drops whole partitions; that needs the Message table recreated as a partitioned table (a composite primary key
including received_at, which Django 5.2 models only through CompositePrimaryKey) and is not done here: this
batched pruner is what runs on both databases today.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError, Q, RestrictedError
from django.utils import timezone

from healthsync.choices import JobRunStatus, MessageStatus
from healthsync.models import (
    Connector,
    ConnectorMetric,
    ExceptionItem,
    Message,
    PruneRun,
    RetentionPolicy,
    SyncJobRun,
)

logger = logging.getLogger(__name__)

PRUNABLE_STATUSES = (
    MessageStatus.PROCESSED,
    MessageStatus.IGNORED,
    MessageStatus.DUPLICATE,
    MessageStatus.FAILED,
    MessageStatus.REJECTED,
)
DEFAULT_BATCH_SIZE = 500


def default_keep_days() -> int:
    return int(getattr(settings, "HEALTHSYNC_RETENTION_DAYS", 30))


def keep_days_for(policies: list[RetentionPolicy], connector_id: int, status: str) -> int:
    """The keep time in days for one connector's messages in one status: the most specific policy wins."""
    best: tuple[int, int] | None = None
    for policy in policies:
        if policy.connector_id not in (None, connector_id) or policy.status not in ("", status):
            continue
        rank = (2 if policy.connector_id else 0) + (1 if policy.status else 0)
        if best is None or rank > best[0]:
            best = (rank, policy.keep_days)
    return best[1] if best is not None else default_keep_days()


def _with_open_exceptions() -> Q:
    open_items = ExceptionItem.objects.open()
    return Q(pk__in=open_items.filter(message__isnull=False).values("message_id")) | Q(
        pk__in=open_items.filter(event__message__isnull=False).values("event__message_id")
    )


def prune(
    *, dry_run: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, now: datetime | None = None
) -> PruneRun:
    """Delete (or, on a dry run, count) messages past their retention; returns the PruneRun record."""
    now = now or timezone.now()
    run = PruneRun.objects.create(started_at=now, dry_run=dry_run)
    policies = list(RetentionPolicy.objects.all())
    protected = _with_open_exceptions()
    lines: list[str] = []
    counts: dict[str, Any] = {}
    connector_ids = Message.objects.values_list("connector_id", flat=True).distinct()
    codes = dict(Connector.objects.filter(pk__in=list(connector_ids)).values_list("pk", "code"))
    for connector_id, code in sorted(codes.items()):
        for status in PRUNABLE_STATUSES:
            days = keep_days_for(policies, connector_id, status)
            cutoff = now - timedelta(days=days)
            due = Message.objects.filter(connector_id=connector_id, status=status, received_at__lt=cutoff)
            held = due.filter(protected).count()
            deleted = _delete_in_batches(due.exclude(protected), batch_size, dry_run)
            run.skipped_open_exceptions += held
            if deleted or held:
                counts.setdefault(code, {})[status] = deleted
                lines.append(
                    f"{code}/{status}: {deleted} {'would be ' if dry_run else ''}deleted "
                    f"(older than {days} days), {held} kept for open exceptions"
                )
            run.messages_deleted += deleted
    counts["_tables"] = _prune_runtime_tables(now, dry_run)
    run.counts = counts
    run.log = "\n".join(lines)
    run.finished_at = timezone.now()
    run.save()
    logger.info(
        "prune %s: %s messages %s, %s kept for open exceptions",
        run.pk,
        run.messages_deleted,
        "would be deleted" if dry_run else "deleted",
        run.skipped_open_exceptions,
    )
    return run


def _delete_in_batches(messages: Any, batch_size: int, dry_run: bool) -> int:
    if dry_run:
        return messages.count()
    deleted, last_id = 0, 0
    while True:
        ids = list(messages.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        last_id = ids[-1]
        try:
            with transaction.atomic():
                deleted += (
                    Message.objects.filter(pk__in=ids).only("pk").delete()[1].get("healthsync.Message", 0)
                )
        except (ProtectedError, RestrictedError):
            # A row elsewhere protects some of these messages: delete the others one by one.
            for message_id in ids:
                try:
                    with transaction.atomic():
                        deleted += (
                            Message.objects.filter(pk=message_id)
                            .only("pk")
                            .delete()[1]
                            .get("healthsync.Message", 0)
                        )
                except (ProtectedError, RestrictedError):
                    logger.info("prune: message %s is protected by a related row; kept", message_id)


def _prune_runtime_tables(now: datetime, dry_run: bool) -> dict[str, int]:
    """The runtime's own bookkeeping: per-minute metrics and finished job and prune runs."""
    metric_days = int(getattr(settings, "HEALTHSYNC_METRIC_RETENTION_DAYS", 14))
    run_days = int(getattr(settings, "HEALTHSYNC_RUN_RETENTION_DAYS", 90))
    targets = {
        "connector_metrics": ConnectorMetric.objects.filter(minute__lt=now - timedelta(days=metric_days)),
        "job_runs": SyncJobRun.objects.filter(created_at__lt=now - timedelta(days=run_days)).exclude(
            status__in=[JobRunStatus.PENDING, JobRunStatus.RUNNING]
        ),
        "prune_runs": PruneRun.objects.filter(started_at__lt=now - timedelta(days=run_days)),
    }
    out = {}
    for name, queryset in targets.items():
        out[name] = queryset.count() if dry_run else queryset.delete()[0]
    return out


def prune_job(context: Any) -> None:
    """The scheduled prune (healthsync.jobs): its counts and log go on the job run."""
    run = prune()
    context.set("prune_run", run.pk)
    context.set("messages_deleted", run.messages_deleted)
    context.set("kept_for_open_exceptions", run.skipped_open_exceptions)
    for line in run.log.splitlines():
        context.log(line)


@transaction.atomic
def retention_policy_set(
    *, connector: Connector | None, status: str, keep_days: int, note: str = "", actor: Any
) -> RetentionPolicy:
    """Create or change the keep time for (connector or any, status or any); audited with the actor."""
    from auditlog.context import set_actor
    from django.core.exceptions import PermissionDenied, ValidationError

    if not actor.has_perm("healthsync.change_retentionpolicy"):
        raise PermissionDenied("You are not allowed to change retention.")
    if status and status not in MessageStatus.values:
        raise ValidationError(f"{status!r} is not a message status.")
    if keep_days < 1:
        raise ValidationError("Keep messages at least one day.")
    with set_actor(actor):
        policy = RetentionPolicy.objects.filter(connector=connector, status=status).first()
        if policy is None:
            policy = RetentionPolicy(connector=connector, status=status)
        policy.keep_days, policy.note = keep_days, note[:200]
        policy.save()
    return policy


@transaction.atomic
def retention_policy_delete(*, policy: RetentionPolicy, actor: Any) -> None:
    from auditlog.context import set_actor
    from django.core.exceptions import PermissionDenied

    if not actor.has_perm("healthsync.change_retentionpolicy"):
        raise PermissionDenied("You are not allowed to change retention.")
    with set_actor(actor):
        policy.delete()
