"""Scheduled sync jobs: declared in code, upserted by name into django-q2 schedules, each run recorded.

    register_job(JobSpec("telemetry-rollup", "healthsync.telemetry.rollup_job", minutes=1))

A job is a function taking a JobContext: it logs (ids and counts, never PHI), counts, and raises JobFailed for
expected bad data (the run is `failed`); any other exception is a bug (the run is `errored`, traceback kept).
The database refuses a second active run of one job (a partial unique index on SyncJobRun), so a run that
overlaps the previous one does not start, whichever process or host the scheduler fired it on; it is recorded
as `skipped`. A run whose worker died is given up after the job's timeout so the job is not blocked forever.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from healthsync.choices import ACTIVE_JOB_RUN_STATUSES, DeliveryStatus, JobRunStatus, Lane
from healthsync.models import Delivery, SyncJobRun

logger = logging.getLogger(__name__)

SCHEDULE_PREFIX = "job:"
_LOG_LIMIT = 20_000


class JobFailed(Exception):
    """Expected trouble with the data a job works on (not a bug): the run ends `failed` with this message."""


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: what runs (a dotted function taking a JobContext), when, and in which lane."""

    name: str
    func: str
    minutes: int | None = None
    daily_at: str | None = None  # "HH:MM" local time
    cron: str | None = None  # needs croniter installed
    lane: str = Lane.BATCH
    timeout_seconds: int = 3600
    description: str = ""
    # Set for a plain task function that takes no JobContext: its return value is recorded under this name.
    counter: str = ""

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.minutes, self.daily_at, self.cron)) != 1:
            raise ImproperlyConfigured(f"Job {self.name}: give exactly one of minutes, daily_at or cron")


class JobContext:
    """What a running job sees: its run record, a log (ids and counts only) and counters."""

    def __init__(self, run: SyncJobRun) -> None:
        self.run = run
        self.lines: list[str] = []
        self.counts: dict[str, Any] = {}

    def log(self, text: str) -> None:
        self.lines.append(f"{timezone.now():%H:%M:%S} {text}")

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def set(self, name: str, value: Any) -> None:
        self.counts[name] = value


JOBS: dict[str, JobSpec] = {}


def register_job(spec: JobSpec) -> None:
    JOBS[spec.name] = spec


def job_run(name: str) -> int | None:
    """Run the job `name` now (the django-q2 schedule's task); returns the run's id, None for an unknown job."""
    spec = JOBS.get(name)
    if spec is None:
        logger.error("no job is declared under the name %r", name)
        return None
    run = _start(spec)
    if run.status == JobRunStatus.SKIPPED:
        return run.pk
    func: Callable[[JobContext], Any] = import_string(spec.func)
    context = JobContext(run)
    status, trace = JobRunStatus.COMPLETED, ""
    try:
        if spec.counter:
            context.set(spec.counter, func())
        else:
            func(context)
    except JobFailed as exc:
        status = JobRunStatus.FAILED
        context.log(f"failed: {exc}")
    except Exception:
        status, trace = JobRunStatus.ERRORED, traceback.format_exc()
        logger.exception("job %s run %s errored", name, run.pk)
    SyncJobRun.objects.filter(pk=run.pk).update(
        status=status,
        finished_at=timezone.now(),
        counts=context.counts,
        log="\n".join(context.lines)[-_LOG_LIMIT:],
        traceback=trace,
    )
    logger.info("job %s run %s %s", name, run.pk, status)
    return run.pk


def _start(spec: JobSpec) -> SyncJobRun:
    now = timezone.now()
    abandoned = SyncJobRun.objects.filter(
        job=spec.name,
        status__in=ACTIVE_JOB_RUN_STATUSES,
        created_at__lt=now - timedelta(seconds=spec.timeout_seconds),
    ).update(
        status=JobRunStatus.ERRORED,
        finished_at=now,
        traceback=f"Abandoned: not finished within {spec.timeout_seconds}s; its worker probably died.",
    )
    if abandoned:
        logger.warning("job %s: gave up %s run(s) whose worker did not finish", spec.name, abandoned)
    worker = f"{socket.gethostname()}:{os.getpid()}"[:120]
    try:
        with transaction.atomic():
            return SyncJobRun.objects.create(
                job=spec.name,
                lane=spec.lane,
                status=JobRunStatus.RUNNING,
                created_at=now,
                started_at=now,
                worker=worker,
            )
    except IntegrityError:
        active = SyncJobRun.objects.filter(job=spec.name, status__in=ACTIVE_JOB_RUN_STATUSES).first()
        note = f"The previous run #{active.pk} was still going." if active else "Another run was starting."
        logger.info("job %s: skipped, %s", spec.name, note)
        return SyncJobRun.objects.create(
            job=spec.name,
            lane=spec.lane,
            status=JobRunStatus.SKIPPED,
            created_at=now,
            finished_at=now,
            worker=worker,
            log=note,
        )


def jobs_sync_schedules() -> list[str]:
    """Upsert one django-q2 schedule per declared job, by name, and drop those of jobs no longer declared."""
    from django_q.models import Schedule

    names = []
    for spec in JOBS.values():
        name = SCHEDULE_PREFIX + spec.name
        names.append(name)
        wanted: dict[str, Any] = {"func": "healthsync.jobs.job_run", "args": repr(spec.name), "repeats": -1}
        if spec.minutes is not None:
            wanted.update(schedule_type=Schedule.MINUTES, minutes=spec.minutes, cron=None)
        elif spec.daily_at is not None:
            wanted.update(schedule_type=Schedule.DAILY, minutes=None, cron=None)
        else:
            wanted.update(schedule_type=Schedule.CRON, minutes=None, cron=spec.cron)
        schedule = Schedule.objects.filter(name=name).order_by("id").first()
        if schedule is None:
            schedule = Schedule(name=name, **wanted)
            if spec.daily_at is not None:
                schedule.next_run = next_daily_run(spec.daily_at)
            schedule.save()
            continue
        changed = {key: value for key, value in wanted.items() if getattr(schedule, key) != value}
        if changed:
            for key, value in changed.items():
                setattr(schedule, key, value)
            if spec.daily_at is not None:
                schedule.next_run = next_daily_run(spec.daily_at)
            schedule.save()
    Schedule.objects.filter(name__startswith=SCHEDULE_PREFIX).exclude(name__in=names).delete()
    return names


# What healthsync.tasks.ensure_schedules should call (tasks.py belongs to the pipeline's owner).
ensure_job_schedules = jobs_sync_schedules


def next_daily_run(daily_at: str, now: datetime | None = None) -> datetime:
    """The next local HH:MM after `now`."""
    hour, minute = (int(part) for part in daily_at.split(":"))
    local = timezone.localtime(now or timezone.now())
    candidate = timezone.make_aware(datetime.combine(local.date(), time(hour, minute)), local.tzinfo)
    return candidate if candidate > local else candidate + timedelta(days=1)


# The jobs ---------------------------------------------------------------------------------------------------


def erp_accrual_summary(context: JobContext, day: Any = None) -> dict[str, Any]:
    """Nightly ERP batch: summarise the accrual journal entries posted on `day` (default: yesterday).

    Counts and totals the accruals the ERP accepted (per cost center) and those that failed; failed accruals
    make the run `failed` so that the batch window shows the ledger is incomplete.
    """
    if day is None:
        day = timezone.localdate() - timedelta(days=1)
    start = timezone.make_aware(datetime.combine(day, time.min))
    end = start + timedelta(days=1)
    accruals = Delivery.objects.filter(operation="post_accrual")
    posted = accruals.filter(status=DeliveryStatus.SUCCEEDED, succeeded_at__gte=start, succeeded_at__lt=end)
    total = Decimal("0.00")
    by_cost_center: dict[str, str] = {}
    for payload in posted.values_list("payload", flat=True).iterator():
        debit = _debit(payload)
        total += debit
        center = str(((payload or {}).get("lines") or [{}])[0].get("cost_center") or "(none)")
        by_cost_center[center] = str(Decimal(by_cost_center.get(center, "0")) + debit)
    failed = accruals.filter(status=DeliveryStatus.FAILED, created_at__gte=start, created_at__lt=end).count()
    context.set("day", day.isoformat())
    context.set("posted", posted.count())
    context.set("total", str(total))
    context.set("by_cost_center", by_cost_center)
    context.set("failed", failed)
    context.log(f"{day}: {posted.count()} accrual(s) posted, total {total}, {failed} failed")
    if failed:
        raise JobFailed(
            f"{failed} accrual journal entr{'y' if failed == 1 else 'ies'} failed to post on {day}"
        )
    return context.counts


def _debit(payload: Any) -> Decimal:
    try:
        return sum(
            (Decimal(str(line.get("debit") or "0")) for line in (payload or {}).get("lines") or []),
            Decimal("0.00"),
        )
    except (InvalidOperation, AttributeError, TypeError):
        return Decimal("0.00")


def erp_accrual_summary_job(context: JobContext) -> None:
    erp_accrual_summary(context)


register_job(
    JobSpec(
        "erp-accrual-summary",
        "healthsync.jobs.erp_accrual_summary_job",
        daily_at="01:30",
        lane=Lane.FINANCIAL,
        description="Nightly summary of the day's accrual journal entries at the ERP.",
    )
)
register_job(
    JobSpec(
        "prune",
        "healthsync.retention.prune_job",
        minutes=60,
        description="Delete messages past their retention, in small batches.",
    )
)
register_job(
    JobSpec(
        "telemetry-rollup",
        "healthsync.telemetry.rollup_job",
        minutes=1,
        timeout_seconds=300,
        description="Roll up per-connector traffic and latency per minute for the operations page.",
    )
)
register_job(
    JobSpec(
        "ops-alerts",
        "healthsync.alerts.alerts_job",
        minutes=1,
        timeout_seconds=300,
        description="Raise and clear operations alerts: connectors gone quiet, queues deep or growing.",
    )
)
