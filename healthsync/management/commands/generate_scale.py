"""Load synthetic encounters, events, claims, remittances and exceptions at scale; prints JSON with rows/s."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Generate N encounters (discharge-to-bill runs with their steps, events, claim deliveries and "
        "exceptions) plus weekly remittances over the last years, with COPY on PostgreSQL; then rebuild the "
        "dashboards' rollups. Prints what it wrote and the rate as JSON."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--encounters", type=int, default=1_000_000)
        parser.add_argument("--events-per-encounter", type=int, default=10)
        parser.add_argument("--years", type=float, default=2.0, help="Span of admit times, ending now.")
        parser.add_argument("--chunk", type=int, default=20_000, help="Encounters per transaction.")
        parser.add_argument("--seed", type=int, default=7, help="Random seed (same seed, same data).")
        parser.add_argument("--skip-rollups", action="store_true", help="Do not rebuild the rollups after.")

    def handle(self, *args: Any, **options: Any) -> None:
        # Lazily: the core's command only reaches into the apps when run.
        from dashboards.generate import generate

        try:
            result = generate(
                encounters=options["encounters"],
                events_per_encounter=options["events_per_encounter"],
                years=options["years"],
                chunk=options["chunk"],
                seed=options["seed"],
                rebuild_rollups=not options["skip_rollups"],
                progress=lambda text: print(f"generate_scale: {text}", file=sys.stderr, flush=True),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(result.as_dict(), indent=2))
