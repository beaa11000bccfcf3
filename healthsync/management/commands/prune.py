"""manage.py prune [--dry-run]: delete messages past their retention and say how many.

On PostgreSQL whole time partitions are dropped first (and the next ones created); the rest goes in small
batches of rows.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from healthsync.retention import DEFAULT_BATCH_SIZE, prune


class Command(BaseCommand):
    help = (
        "Delete messages past their retention (per connector and status): whole time partitions on "
        "PostgreSQL, then small batches of rows; --dry-run only counts them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )
        parser.add_argument(
            "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="Rows per transaction."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        run = prune(dry_run=options["dry_run"], batch_size=max(1, options["batch_size"]))
        for line in run.log.splitlines():
            self.stdout.write(line)
        verb = "would be deleted" if run.dry_run else "deleted"
        self.stdout.write(
            self.style.SUCCESS(
                f"Prune run #{run.pk}: {run.messages_deleted} message(s) {verb}, "
                f"{run.skipped_open_exceptions} kept for open exceptions."
            )
        )
        dropped = run.counts.get("_partitions", {})
        if dropped:
            verb = "would be dropped" if run.dry_run else "dropped"
            self.stdout.write(f"{len(dropped)} partition(s) {verb}: {sum(dropped.values())} message(s).")
