"""Measure ingest, processing and latency against DATABASE_URL and print the figures as JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from healthsync import benchmark


class Command(BaseCommand):
    help = (
        "Benchmark the MLLP listener (1, 16 and 64 connections), processing and receive-to-event latency "
        "against the configured database; prints JSON, each rate beside the batched-insert rate."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seconds", type=float, default=10.0, help="Duration of each ingest run.")
        parser.add_argument("--quick", action="store_true", help="Short runs (tests, CI): figures are rough.")
        parser.add_argument("--skip-processing", action="store_true", help="Do not measure processing.")
        parser.add_argument("--skip-latency", action="store_true", help="Do not measure latency.")
        parser.add_argument(
            "--process-total", type=int, default=50_000, help="Backlog size for the processing measurement."
        )
        parser.add_argument("--latency-rate", type=float, default=500.0, help="Offered msgs/s for latency.")
        parser.add_argument(
            "--latency-workers", type=int, default=2, help="Worker processes running during the latency run."
        )
        parser.add_argument(
            "--listener-processes", type=int, default=None, help="Passed to mllp_listener --processes."
        )
        parser.add_argument(
            "--dashboards", action="store_true", help="Only time the dashboard pages (dashboards/bench.py)."
        )
        parser.add_argument("--requests", type=int, default=10, help="Requests per page with --dashboards.")
        # Internal: the worker the latency measurement runs beside the listener.
        parser.add_argument(
            "--worker-loop", action="store_true", help="(internal) run a worker until SIGTERM."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["worker_loop"]:
            benchmark.worker_loop()
            return
        if options["dashboards"]:
            self.stdout.write(
                json.dumps(benchmark.dashboard_benchmark(requests=options["requests"]), indent=2)
            )
            return
        if options["seconds"] <= 0:
            raise CommandError("--seconds must be positive")
        extra = []
        if options["listener_processes"]:
            extra = ["--processes", str(options["listener_processes"])]
        try:
            result = benchmark.run_benchmark(
                seconds=options["seconds"],
                quick=options["quick"],
                skip_processing=options["skip_processing"],
                skip_latency=options["skip_latency"],
                process_total=options["process_total"],
                latency_rate=options["latency_rate"],
                latency_workers=options["latency_workers"],
                listener_args=extra,
                log=lambda text: print(f"benchmark: {text}", file=sys.stderr, flush=True),
            )
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(result, indent=2))
