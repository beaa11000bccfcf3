"""Play a realistic patient flow (admits, charges, discharges) into an MLLP listener, for the demo."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connectors.simulators.ehr import EhrSimulator


class Command(BaseCommand):
    help = "Reference EHR: send ADT^A01, DFT^P03 and ADT^A03 messages over MLLP and check every ACK."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=2575)
        parser.add_argument("--rate", type=float, default=2.0, help="Messages per second (default 2).")
        parser.add_argument(
            "--missing-share",
            type=float,
            default=0.2,
            help="Share of discharges lacking insurance, diagnosis, attending or financial class.",
        )
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--encounters", type=int, default=None, help="Stop after this many encounters.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            simulator = EhrSimulator(
                options["host"],
                options["port"],
                rate_per_s=options["rate"],
                missing_share=options["missing_share"],
                seed=options["seed"],
                max_encounters=options["encounters"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        def stop(signum: int, frame: FrameType | None) -> None:
            simulator.stop(timeout=0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        simulator.serve_forever()
