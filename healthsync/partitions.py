"""The message store's time partitions on PostgreSQL: created ahead, on demand, and listed for retention.

healthsync_message is range-partitioned by received_at in UTC-aligned ranges of
HEALTHSYNC_MESSAGE_PARTITION_DAYS days (default 1), named healthsync_message_pYYYYMMDD after their first day,
plus a DEFAULT partition (healthsync_message_default) that catches any row no range covers, so an insert never
fails for a missing partition. The prune job keeps HEALTHSYNC_MESSAGE_PARTITIONS_AHEAD ranges ready past the
current one and ingest creates the current one itself when it finds it missing.

A partition is created as a plain table and then attached: ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on
the parent (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE and stall ingest). Rows the DEFAULT
partition caught for the new range are moved into the table first, in the same transaction, since ATTACH
refuses a range the DEFAULT partition still holds rows of. Every DDL statement runs under a short lock_timeout
so that it gives way rather than queue in front of the listener.

Functions take a DB-API cursor (Django's, or the listener's own psycopg connection) and expect the caller to
hold a transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

TABLE = "healthsync_message"
DEFAULT_PARTITION = f"{TABLE}_default"
# A detached partition waiting to be dropped (see healthsync.retention); found again after a crash.
PRUNING_PREFIX = f"{TABLE}_pruning_"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# pg_advisory_xact_lock key serialising partition DDL across listeners, workers and the pruner.
DDL_LOCK = 0x48535061  # "HSPa"


@dataclass(frozen=True)
class Partition:
    """One attached range partition of the message store."""

    name: str
    start: datetime
    end: datetime


def partition_days() -> int:
    return max(1, int(getattr(settings, "HEALTHSYNC_MESSAGE_PARTITION_DAYS", 1)))


def partitions_ahead() -> int:
    return max(0, int(getattr(settings, "HEALTHSYNC_MESSAGE_PARTITIONS_AHEAD", 2)))


def lock_timeout_ms() -> int:
    return max(1, int(getattr(settings, "HEALTHSYNC_PARTITION_LOCK_TIMEOUT_MS", 500)))


def range_for(moment: datetime, days: int | None = None) -> tuple[datetime, datetime]:
    """The aligned [start, end) range of `days` days (UTC, counted from 1970-01-01) that holds `moment`."""
    days = days or partition_days()
    span = timedelta(days=days)
    start = EPOCH + span * ((moment.astimezone(UTC) - EPOCH) // span)
    return start, start + span


def partition_name(start: datetime) -> str:
    return f"{TABLE}_p{start.astimezone(UTC):%Y%m%d}"


def is_partitioned(cursor: Any) -> bool:
    cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)", [TABLE])
    return cursor.fetchone() is not None


def using_partitions() -> bool:
    """Whether the configured database's message store is partitioned (PostgreSQL after migration 0005)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        return is_partitioned(cursor)


def list_partitions(cursor: Any) -> list[Partition]:
    """The attached range partitions, oldest first (the DEFAULT partition is not listed)."""
    # The bounds are cast by the database, so the session's TimeZone never matters to the parsing.
    cursor.execute(
        """
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(%s) AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
        ORDER BY 2
        """,
        [TABLE],
    )
    return [Partition(name, start, end) for name, start, end in cursor.fetchall()]


def ensure_partitions(
    cursor: Any, *, now: datetime, ahead: int | None = None, days: int | None = None
) -> list[Partition]:
    """Make sure the range holding `now` and `ahead` ranges after it are attached; returns those created.

    Ranges already covered (even by partitions of another size, after the setting changed) are left alone;
    a gap is filled with a partition clipped to its neighbours.
    """
    ahead = partitions_ahead() if ahead is None else ahead
    days = days or partition_days()
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DDL_LOCK])
    cursor.execute(f"SET LOCAL lock_timeout = {lock_timeout_ms()}")
    existing = list_partitions(cursor)
    created: list[Partition] = []
    start, end = range_for(now, days)
    for _ in range(ahead + 1):
        for gap_start, gap_end in _gaps(existing, start, end):
            partition = Partition(partition_name(gap_start), gap_start, gap_end)
            _create(cursor, partition)
            existing.append(partition)
            created.append(partition)
        start, end = end, end + timedelta(days=days)
    # SET LOCAL outlives a savepoint: give the caller's transaction its own timeout back.
    cursor.execute("SET LOCAL lock_timeout TO DEFAULT")
    for partition in created:
        logger.info("partitions: created %s [%s, %s)", partition.name, partition.start, partition.end)
    return created


def _gaps(existing: list[Partition], start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    gaps = [(start, end)]
    for p in existing:
        next_gaps = []
        for lo, hi in gaps:
            if p.end <= lo or p.start >= hi:
                next_gaps.append((lo, hi))
                continue
            if lo < p.start:
                next_gaps.append((lo, p.start))
            if p.end < hi:
                next_gaps.append((p.end, hi))
        gaps = next_gaps
    return gaps


def _create(cursor: Any, partition: Partition) -> None:
    name, default = _quote(partition.name), _quote(DEFAULT_PARTITION)
    # Identifiers are generated here from dates.
    cursor.execute(f"CREATE TABLE {name} (LIKE {_quote(TABLE)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {default} WHERE received_at >= %s AND received_at < %s RETURNING *) "  # noqa: S608
        f"INSERT INTO {name} SELECT * FROM moved",
        [partition.start, partition.end],
    )
    # DDL takes no parameters (with server-side binding they would not be filled in): the bounds are spelled
    # out, from datetimes made here.
    cursor.execute(
        f"ALTER TABLE {_quote(TABLE)} ATTACH PARTITION {name} "
        f"FOR VALUES FROM ('{partition.start.isoformat()}') TO ('{partition.end.isoformat()}')"
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Coverage:
    """Per process: until when the partitions already cover ingest, so the check costs a comparison."""

    def __init__(self) -> None:
        self.until: datetime | None = None

    def ensure(self, run: Any, now: datetime) -> None:
        """`run(fn)` calls fn(cursor) in a transaction on the connection ingest writes with."""
        if self.until is not None and now < self.until:
            return
        try:
            partitions = run(lambda cursor: _ensure_and_list(cursor, now))
        except Exception:
            # The DEFAULT partition takes the rows meanwhile; try again in a minute rather than per batch.
            logger.warning("partitions: could not create the current partition; rows go to the default")
            self.until = now + timedelta(minutes=1)
            return
        if partitions is None:  # not partitioned (before the migration): nothing to do for a while
            self.until = now + timedelta(hours=1)
            return
        self.until = _covered_until(partitions, now)

    def reset(self) -> None:
        self.until = None


def _ensure_and_list(cursor: Any, now: datetime) -> list[Partition] | None:
    if not is_partitioned(cursor):
        return None
    existing = list_partitions(cursor)
    if _covered_until(existing, now) > now + timedelta(hours=1):
        return existing
    ensure_partitions(cursor, now=now, ahead=1)
    return list_partitions(cursor)


def _covered_until(partitions: list[Partition], now: datetime) -> datetime:
    """The end of the contiguous run of partitions holding `now` (or `now` itself when none holds it)."""
    until = now
    for p in partitions:
        if p.start <= until < p.end:
            until = p.end
    return until


ingest_coverage = _Coverage()
