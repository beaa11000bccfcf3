"""Run the reference RCM simulator the demo delivers to."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from connectors.simulators.rcm import RcmSimulator


class Command(BaseCommand):
    help = "Run the reference revenue-cycle (RCM) system the demo submits claims to."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8101)

    def handle(self, *args: Any, **options: Any) -> None:
        simulator = RcmSimulator(options["host"], options["port"])
        stopped = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        simulator.start()
        self.stdout.write(f"RCM simulator listening on {options['host']}:{options['port']}")
        while not stopped.wait(0.5):
            pass
        simulator.stop()
