"""manage.py run_job NAME: run one declared sync job now (the overlap guard applies); --list names them."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from healthsync.choices import JobRunStatus
from healthsync.jobs import JOBS, job_run
from healthsync.models import SyncJobRun


class Command(BaseCommand):
    help = "Run a declared scheduled sync job now and print its outcome."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?", help="The job's name.")
        parser.add_argument("--list", action="store_true", help="List the declared jobs.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"] or not options["name"]:
            for spec in JOBS.values():
                when = (
                    f"every {spec.minutes} min"
                    if spec.minutes
                    else f"daily at {spec.daily_at}"
                    if spec.daily_at
                    else f"cron {spec.cron}"
                )
                self.stdout.write(f"{spec.name:24} {when:18} {spec.lane:10} {spec.description}")
            return
        name = options["name"]
        if name not in JOBS:
            raise CommandError(f"No job is declared under the name {name!r}; see --list.")
        run = SyncJobRun.objects.get(pk=job_run(name))
        self.stdout.write(f"Job {name} run #{run.pk}: {run.status} {run.counts}")
        if run.log:
            self.stdout.write(run.log)
        if run.status == JobRunStatus.ERRORED:
            raise CommandError(f"The job errored:\n{run.traceback}")
        if run.status == JobRunStatus.FAILED:
            raise CommandError("The job failed; see its log above.")
