"""manage.py export_config DIR: every governed object as one readable YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from healthsync.governance.configio import export_config


class Command(BaseCommand):
    help = (
        "Write all governed configuration (systems, connectors, mappings, schemas, ownership) as YAML files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", type=Path)

    def handle(self, *args: Any, directory: Path, **options: Any) -> None:
        written = export_config(directory)
        self.stdout.write(f"Wrote {len(written)} files to {directory}.")
