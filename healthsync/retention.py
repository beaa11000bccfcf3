"""Retention: delete what is past its keep time, in small batches, without ever holding up ingest.

Policies are per connector and/or per message status (RetentionPolicy); the most specific one wins:
(connector, status) > (connector, any status) > (any connector, status) > (any, any) > the setting
HEALTHSYNC_RETENTION_DAYS. Failed, rejected and duplicate messages are pruned like any other once past their
retention, except a message an open exception still points at (people are working it). Messages still
waiting for a worker (received, processing) are never pruned.

On PostgreSQL the message store is partitioned by received_at (healthsync.partitions) and whole partitions go
first: a partition whose newest possible row is older than the longest keep time any connector and status has
is detached and dropped, which costs the same for a million rows as for ten. Its rows that must stay (still
queued, or held by an open exception) are moved into the DEFAULT partition in the detach's own transaction and
left to the row path. Rows pointing at its messages get their links cleared before the detach, in batches.
The detach holds an ACCESS EXCLUSIVE lock on the parent for milliseconds, under a short lock_timeout and
retried, so it gives way to the listener instead of queueing in front of it. What is dropped is counted per
connector and status from the detached table (nobody can write to it then), before it is dropped.

Then, on both databases, rows whose own keep time is shorter than their partition's age (and everything on
SQLite) are deleted in short transactions of `batch_size` ids taken in id order, so each one locks a few
hundred rows for milliseconds and the listener's inserts (always the newest ids) never wait behind them. Rows
pointing at a pruned message (events, exceptions, replays, duplicates) keep existing with the link cleared
(SET NULL); its duplicate-check key (MessageKey) goes with it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, models, transaction
from django.db.models import ProtectedError, Q, RestrictedError
from django.utils import timezone

from healthsync import partitions
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
# Partitions whose kept rows exceed this are left to the row path: moving them would cost more than deleting.
MAX_RESCUED_ROWS = 10_000
DETACH_ATTEMPTS = 5


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
    codes = dict(Connector.objects.values_list("pk", "code"))
    # Ranges of partitions left for a later drop (busy, or a dry run): the row path must not eat them.
    later = Q()
    if partitions.using_partitions():
        if not dry_run:
            _ensure_ahead(lines)
        for start, end in _prune_partitions(
            run, now=now, policies=policies, codes=codes, lines=lines, counts=counts
        ):
            later |= Q(received_at__gte=start, received_at__lt=end)
    connector_ids = Message.objects.values_list("connector_id", flat=True).distinct()
    codes = dict(Connector.objects.filter(pk__in=list(connector_ids)).values_list("pk", "code"))
    for connector_id, code in sorted(codes.items()):
        for status in PRUNABLE_STATUSES:
            days = keep_days_for(policies, connector_id, status)
            cutoff = now - timedelta(days=days)
            due = Message.objects.filter(connector_id=connector_id, status=status, received_at__lt=cutoff)
            if later:
                due = due.exclude(later)
            held = due.filter(protected).count()
            deleted = _delete_in_batches(due.exclude(protected), batch_size, dry_run)
            run.skipped_open_exceptions += held
            if deleted or held:
                per_status = counts.setdefault(code, {})
                per_status[status] = per_status.get(status, 0) + deleted
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


def _prune_partitions(
    run: PruneRun,
    *,
    now: datetime,
    policies: list[RetentionPolicy],
    codes: dict[int, str],
    lines: list[str],
    counts: dict[str, Any],
) -> list[tuple[datetime, datetime]]:
    """Drop (or, on a dry run, count) the partitions every row of which is past its retention.

    Returns the ranges of those not dropped now but to be dropped whole later (dry run, or busy).
    """
    longest = max(
        [keep_days_for(policies, cid, status) for cid in codes for status in PRUNABLE_STATUSES],
        default=default_keep_days(),
    )
    cutoff = now - timedelta(days=longest)
    dropped: dict[str, int] = {}
    later: list[tuple[datetime, datetime]] = []
    with connection.cursor() as cursor:
        leftovers = _detached_leftovers(cursor)
        due = [p for p in partitions.list_partitions(cursor) if p.end <= cutoff]
    for name in leftovers:  # detached by a run that stopped before dropping it
        dropped[name] = _drop_detached(name, run, codes, counts)
    for partition in due:
        if run.dry_run:
            tally = _tally(partition.name, codes, without_kept=True)
            kept = _kept_count(partition.name)
            for code, by_status in tally.items():
                for status, n in by_status.items():
                    counts.setdefault(code, {})[status] = counts.get(code, {}).get(status, 0) + n
                    run.messages_deleted += n
            dropped[partition.name] = sum(n for by_status in tally.values() for n in by_status.values())
            lines.append(
                f"partition {partition.name}: {dropped[partition.name]} would be dropped "
                f"(older than {longest} days), {kept} would be kept"
            )
            later.append((partition.start, partition.end))
            continue
        if _kept_count(partition.name) > MAX_RESCUED_ROWS:
            lines.append(f"partition {partition.name}: too many rows to keep; pruned row by row")
            continue
        detached = _detach(partition)
        if detached is None:
            lines.append(f"partition {partition.name}: busy, left for the next run")
            later.append((partition.start, partition.end))
            continue
        rescued = detached[1]
        dropped[partition.name] = _drop_detached(detached[0], run, codes, counts)
        lines.append(
            f"partition {partition.name}: {dropped[partition.name]} dropped (older than {longest} days), "
            f"{rescued} kept (queued or open exceptions) and left to the row path"
        )
    if dropped:
        counts["_partitions"] = dropped
    return later


def _ensure_ahead(lines: list[str]) -> None:
    """The prune job is also what keeps partitions ready ahead of ingest (which only makes the current one)."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            created = partitions.ensure_partitions(cursor, now=timezone.now())
    except OperationalError:
        logger.warning("prune: could not create partitions ahead (busy); ingest makes them on demand")
        return
    lines.extend(f"partition {p.name}: created ahead" for p in created)


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _detached_leftovers(cursor: Any) -> list[str]:
    cursor.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE %s AND NOT relispartition "
        "AND relnamespace = current_schema()::regnamespace ORDER BY relname",
        [partitions.PRUNING_PREFIX.replace("_", "\\_") + "%"],
    )
    return [row[0] for row in cursor.fetchall()]


def _tally(table: str, codes: dict[int, str], *, without_kept: bool = False) -> dict[str, dict[str, int]]:
    """Rows per connector and status in one partition (or detached partition)."""
    out: dict[str, dict[str, int]] = {}
    condition, params = _keep_condition() if without_kept else ("FALSE", [])
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT connector_id, status, count(*) FROM {_quote(table)} WHERE NOT {condition} GROUP BY 1, 2",  # noqa: S608
            params,
        )
        for connector_id, status, n in cursor.fetchall():
            out.setdefault(codes.get(connector_id, str(connector_id)), {})[status] = n
    return out


def _keep_condition(alias: str = "") -> tuple[str, list[Any]]:
    """SQL for the rows of a partition that must outlive it: still queued, or held by an open exception."""
    # Read from the exceptions alone: inside the detach the partition's messages are no longer in Message.
    open_items = ExceptionItem.objects.open()
    open_ids = {
        *open_items.filter(message_id__isnull=False).values_list("message_id", flat=True),
        *open_items.filter(event__message_id__isnull=False).values_list("event__message_id", flat=True),
    }
    condition = f"({alias}status <> ALL(%s) OR {alias}id = ANY(%s::bigint[]))"
    return condition, [list(PRUNABLE_STATUSES), sorted(open_ids)]


def _kept_count(table: str) -> int:
    condition, params = _keep_condition()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {_quote(table)} WHERE {condition}", params)  # noqa: S608
        return cursor.fetchone()[0]


def _detach(partition: partitions.Partition) -> tuple[str, int] | None:
    """Clear links to the partition's messages, then detach it; returns (detached table, rows kept) or None.

    The rows that must stay are copied back through the parent in the same transaction: with their range
    detached they land in the DEFAULT partition, so they never disappear, even for a moment.
    """
    _clear_links(partition.name)
    target = partitions.PRUNING_PREFIX + partition.name.removeprefix(partitions.TABLE + "_")
    parent = _quote(partitions.TABLE)
    for attempt in range(DETACH_ATTEMPTS):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = {partitions.lock_timeout_ms()}")
                cursor.execute(f"ALTER TABLE {parent} DETACH PARTITION {_quote(partition.name)}")
                cursor.execute(f"ALTER TABLE {_quote(partition.name)} RENAME TO {_quote(target)}")
                condition, params = _keep_condition()
                cursor.execute(
                    f"WITH kept AS (DELETE FROM {_quote(target)} WHERE {condition} RETURNING *) "  # noqa: S608
                    f"INSERT INTO {parent} SELECT * FROM kept",
                    params,
                )
                return target, cursor.rowcount
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            logger.info("prune: %s is busy (attempt %d); trying again", partition.name, attempt + 1)
            time.sleep(0.2 * (attempt + 1))
    return None


def _references() -> list[models.ForeignKey]:
    """Every foreign key to Message, on any model: its rows are cleared or deleted as Django would."""
    return [
        rel.field
        for rel in Message._meta.get_fields(include_hidden=True)
        if rel.one_to_many and rel.auto_created and isinstance(rel.field, models.ForeignKey)
    ]


def _clear_links(table: str, chunk: int = 20_000) -> None:
    """Apply each reference's on_delete to the messages in `table` (but the kept ones), by id range.

    Set-based and driven by each reference's index: a range holding no links costs one index probe, where
    lists of ids cost the same whether anything points at them or not.
    """
    condition, params = _keep_condition("p.")
    source = _quote(table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT min(id), max(id) FROM {source}")  # noqa: S608
        low, high = cursor.fetchone()
    if low is None:
        return
    for start in range(low, high + 1, chunk):
        with transaction.atomic(), connection.cursor() as cursor:
            for field in _references():
                ref, column = _quote(field.model._meta.db_table), _quote(field.column)
                match = (
                    f"{ref}.{column} BETWEEN %s AND %s AND EXISTS (SELECT 1 FROM {source} AS p "  # noqa: S608
                    f"WHERE p.id = {ref}.{column} AND NOT {condition})"
                )
                if field.remote_field.on_delete is models.SET_NULL:
                    sql = f"UPDATE {ref} SET {column} = NULL WHERE {match}"  # noqa: S608
                elif field.remote_field.on_delete is models.CASCADE:
                    # Only MessageKey cascades today, and nothing points at it.
                    sql = f"DELETE FROM {ref} WHERE {match}"  # noqa: S608
                else:
                    continue
                cursor.execute(sql, [start, start + chunk - 1, *params])


def _drop_detached(table: str, run: PruneRun, codes: dict[int, str], counts: dict[str, Any]) -> int:
    """Count a detached partition's rows into the run, clear links made since, and drop it."""
    # Links made to these messages between the first clearing and the detach.
    _clear_links(table)
    tally = _tally(table, codes)
    total = 0
    for code, by_status in tally.items():
        for status, n in by_status.items():
            per_status = counts.setdefault(code, {})
            per_status[status] = per_status.get(status, 0) + n
            total += n
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {_quote(table)}")
    run.messages_deleted += total
    return total


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
