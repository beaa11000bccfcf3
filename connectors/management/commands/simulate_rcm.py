"""Run the reference RCM simulator the demo delivers to, with its payer mailbox for 277CA and 835 files."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from connectors.management.simulator_command import SimulatorCommand
from connectors.simulators.rcm import RcmSimulator


class Command(SimulatorCommand):
    help = (
        "Run the reference revenue-cycle (RCM) system the demo submits claims to. With --mailbox it drops the "
        "277CA of each accepted 837 batch and, every --remit-every seconds, an 835 into that folder."
    )
    simulator_class = RcmSimulator
    label = "RCM"
    default_port = 8101

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--mailbox",
            default="",
            help="Folder the payer drops 277CA and 835 files into (created if missing).",
        )
        parser.add_argument(
            "--remit-every",
            type=float,
            default=30.0,
            help="Seconds between 835 remittances dropped into the mailbox (0: only on GET /x12/835).",
        )
        parser.add_argument(
            "--deny-one-in", type=int, default=10, help="Deny one claim in N (by its number; 0: none)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["remit_every"] < 0:
            raise CommandError("--remit-every must be 0 or a number of seconds")
        simulator = RcmSimulator(options["host"], options["port"], mailbox=options["mailbox"] or None)
        simulator.deny_one_in = max(0, options["deny_one_in"])
        interval = options["remit_every"] if options["mailbox"] else 0

        def remit() -> None:
            if interval and simulator.remit() is not None:
                self.stdout.write(f"835 {len(simulator.remittances)} dropped into the payer mailbox")

        self.serve(simulator, options, every=interval or 0.5, tick=remit)

    def listening_detail(self, options: dict[str, Any]) -> str:
        return f"; payer mailbox {options['mailbox']}" if options["mailbox"] else ""
