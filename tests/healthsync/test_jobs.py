"""Scheduled sync jobs: declared in code, upserted by name, one run record each, never two at once."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django_q.models import Schedule

from healthsync import jobs
from healthsync.choices import DeliveryStatus, JobRunStatus, Lane
from healthsync.jobs import JOBS, JobContext, JobFailed, JobSpec, job_run, jobs_sync_schedules, register_job
from healthsync.models import Connector, Delivery, SyncJobRun
from healthsync.seed import seed_reference_config

pytestmark = pytest.mark.django_db

GATE = threading.Event()


def completing_job(context: JobContext) -> None:
    context.count("rows", 3)
    context.log("three rows")


def failing_job(context: JobContext) -> None:
    context.count("bad_rows")
    raise JobFailed("row 7 has no account")


def buggy_job(context: JobContext) -> None:
    raise ZeroDivisionError("oops")


def overlapping_job(context: JobContext) -> None:
    # While this run is going, the same job fired again must not start.
    context.set("second", job_run("test-overlap"))


@pytest.fixture
def test_jobs() -> Iterator[None]:
    saved = dict(jobs.JOBS)
    for name, func in (
        ("test-complete", "completing_job"),
        ("test-fail", "failing_job"),
        ("test-bug", "buggy_job"),
        ("test-overlap", "overlapping_job"),
    ):
        register_job(JobSpec(name, f"tests.healthsync.test_jobs.{func}", minutes=5))
    yield
    jobs.JOBS.clear()
    jobs.JOBS.update(saved)


def test_a_completed_run_keeps_its_counts_and_log(test_jobs: None) -> None:
    run = SyncJobRun.objects.get(pk=job_run("test-complete"))
    assert run.status == JobRunStatus.COMPLETED
    assert run.counts == {"rows": 3} and "three rows" in run.log
    assert run.started_at and run.finished_at and run.worker and run.lane == Lane.BATCH


def test_bad_data_fails_the_run_and_a_bug_errors_it_with_the_traceback(test_jobs: None) -> None:
    failed = SyncJobRun.objects.get(pk=job_run("test-fail"))
    assert failed.status == JobRunStatus.FAILED
    assert "row 7 has no account" in failed.log and failed.traceback == ""
    assert failed.counts == {"bad_rows": 1}
    errored = SyncJobRun.objects.get(pk=job_run("test-bug"))
    assert errored.status == JobRunStatus.ERRORED
    assert "ZeroDivisionError: oops" in errored.traceback


def test_a_run_that_overlaps_the_previous_one_does_not_start(test_jobs: None) -> None:
    first = SyncJobRun.objects.get(pk=job_run("test-overlap"))
    second = SyncJobRun.objects.get(pk=first.counts["second"])
    assert first.status == JobRunStatus.COMPLETED
    assert second.status == JobRunStatus.SKIPPED
    assert f"#{first.pk} was still going" in second.log
    # Once the first has finished the job runs again.
    assert SyncJobRun.objects.get(pk=job_run("test-complete")).status == JobRunStatus.COMPLETED


def test_the_database_refuses_a_second_active_run_of_a_job() -> None:
    from django.db import IntegrityError, transaction

    SyncJobRun.objects.create(job="x", status=JobRunStatus.RUNNING)
    with pytest.raises(IntegrityError), transaction.atomic():
        SyncJobRun.objects.create(job="x", status=JobRunStatus.PENDING)
    SyncJobRun.objects.create(job="x", status=JobRunStatus.COMPLETED)  # finished runs are not limited


@pytest.mark.django_db(transaction=True)
def test_the_overlap_guard_holds_across_connections(test_jobs: None) -> None:
    """A run started by another process (here: another thread with its own connection) blocks this one."""
    register_job(JobSpec("test-slow", "tests.healthsync.test_jobs.slow_job", minutes=5))
    GATE.clear()
    started = threading.Event()
    result: dict[str, int | None] = {}

    def other_worker() -> None:
        try:
            STARTED.append(started)
            result["first"] = job_run("test-slow")
        finally:
            connection.close()

    thread = threading.Thread(target=other_worker)
    thread.start()
    assert started.wait(20)
    try:
        second = SyncJobRun.objects.get(pk=job_run("test-slow"))
        assert second.status == JobRunStatus.SKIPPED
    finally:
        GATE.set()
        thread.join(20)
    assert SyncJobRun.objects.get(pk=result["first"]).status == JobRunStatus.COMPLETED


STARTED: list[threading.Event] = []


def slow_job(context: JobContext) -> None:
    STARTED.pop().set()
    GATE.wait(20)


def test_a_run_left_running_by_a_dead_worker_is_given_up_after_the_timeout(test_jobs: None) -> None:
    stale = SyncJobRun.objects.create(
        job="test-complete", status=JobRunStatus.RUNNING, created_at=timezone.now() - timedelta(hours=2)
    )
    run = SyncJobRun.objects.get(pk=job_run("test-complete"))
    assert run.status == JobRunStatus.COMPLETED
    stale.refresh_from_db()
    assert stale.status == JobRunStatus.ERRORED and "Abandoned" in stale.traceback


def test_an_unknown_job_runs_nothing() -> None:
    assert job_run("no-such-job") is None
    assert not SyncJobRun.objects.exists()


def test_schedules_are_upserted_by_name_and_stale_ones_dropped() -> None:
    Schedule.objects.create(name="job:retired", func="healthsync.jobs.job_run", args="'retired'")
    Schedule.objects.create(name="healthsync.process_pending", func="healthsync.tasks.process_pending")
    names = jobs_sync_schedules()
    jobs_sync_schedules()  # idempotent
    assert {"job:erp-accrual-summary", "job:prune", "job:telemetry-rollup"} <= set(names)
    assert set(names) == {f"job:{name}" for name in JOBS}
    assert Schedule.objects.filter(name__startswith="job:").count() == len(JOBS)
    assert not Schedule.objects.filter(name="job:retired").exists()
    assert Schedule.objects.filter(name="healthsync.process_pending").exists()  # not ours: untouched
    rollup = Schedule.objects.get(name="job:telemetry-rollup")
    assert (
        rollup.schedule_type == Schedule.MINUTES
        and rollup.minutes == 1
        and rollup.args == "'telemetry-rollup'"
    )
    nightly = Schedule.objects.get(name="job:erp-accrual-summary")
    assert nightly.schedule_type == Schedule.DAILY
    local = timezone.localtime(nightly.next_run)
    assert (local.hour, local.minute) == (1, 30) and nightly.next_run > timezone.now()


def test_a_job_declares_exactly_one_schedule() -> None:
    with pytest.raises(ImproperlyConfigured):
        JobSpec("bad", "x.y", minutes=1, daily_at="01:00")
    with pytest.raises(ImproperlyConfigured):
        JobSpec("bad", "x.y")


def test_the_nightly_erp_summary_counts_the_days_accruals_and_fails_on_failed_ones() -> None:
    seed_reference_config()
    erp = Connector.objects.get(code="erp-journals")
    day = dt.date(2026, 1, 3)
    at = timezone.make_aware(dt.datetime(2026, 1, 3, 14, 0))

    def accrual(key: str, status: str, amount: str, center: str) -> None:
        Delivery.objects.create(
            connector=erp,
            operation="post_accrual",
            idempotency_key=key,
            status=status,
            created_at=at,
            succeeded_at=at if status == DeliveryStatus.SUCCEEDED else None,
            payload={"lines": [{"debit": amount, "cost_center": center}, {"credit": amount}]},
        )

    accrual("a", DeliveryStatus.SUCCEEDED, "100.50", "GENHOSP")
    accrual("b", DeliveryStatus.SUCCEEDED, "20.00", "GENHOSP")
    accrual("c", DeliveryStatus.SUCCEEDED, "5.00", "NORTH")
    run = SyncJobRun.objects.create(job="erp-accrual-summary")
    context = JobContext(run)
    counts = jobs.erp_accrual_summary(context, day)
    assert counts["posted"] == 3 and counts["total"] == "125.50" and counts["failed"] == 0
    assert counts["by_cost_center"] == {"GENHOSP": "120.50", "NORTH": "5.00"}

    accrual("d", DeliveryStatus.FAILED, "9.00", "NORTH")
    with pytest.raises(JobFailed, match="1 accrual journal entry failed"):
        jobs.erp_accrual_summary(JobContext(run), day)


def test_the_run_job_command_runs_a_job_and_reports_failure(test_jobs: None, capsys) -> None:
    call_command("run_job", "test-complete")
    assert "completed" in capsys.readouterr().out
    with pytest.raises(CommandError, match="failed"):
        call_command("run_job", "test-fail")
    with pytest.raises(CommandError, match="ZeroDivisionError"):
        call_command("run_job", "test-bug")
    with pytest.raises(CommandError, match="No job"):
        call_command("run_job", "nope")
    call_command("run_job", "--list")
    assert "telemetry-rollup" in capsys.readouterr().out
