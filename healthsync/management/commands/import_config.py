"""manage.py import_config DIR --user NAME: YAML files back in, as change requests for the board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from healthsync.governance.configio import import_config


class Command(BaseCommand):
    help = "Read configuration exported by export_config; every difference becomes a change request."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--user", required=True, help="The author of the change requests.")
        parser.add_argument("--reason", default="Imported from configuration files.")
        parser.add_argument("--draft", action="store_true", help="Leave the requests as drafts.")

    def handle(
        self, *args: Any, directory: Path, user: str, reason: str, draft: bool, **options: Any
    ) -> None:
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a directory.")
        actor = get_user_model().objects.filter(username=user).first()
        if actor is None:
            raise CommandError(f"No user named {user!r}.")
        report = import_config(directory, actor=actor, reason=reason, submit=not draft)
        for cr in report.created:
            self.stdout.write(f"CR-{cr.pk} {cr.get_status_display().lower()}: {cr.title}")
        for name in report.pending:
            self.stdout.write(f"skipped {name}: a change request for it is already open")
        self.stdout.write(
            f"{len(report.created)} change requests, {len(report.unchanged)} unchanged, "
            f"{len(report.pending)} already pending, {len(report.errors)} errors."
        )
        if report.errors:
            raise CommandError("\n".join(report.errors))
