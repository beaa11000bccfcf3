"""Run the reference ERP simulator the demo delivers to."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from connectors.simulators.erp import ErpSimulator


class Command(BaseCommand):
    help = "Run the reference ERP the demo posts journals to."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8102)

    def handle(self, *args: Any, **options: Any) -> None:
        simulator = ErpSimulator(options["host"], options["port"])
        stopped = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        simulator.start()
        self.stdout.write(f"ERP simulator listening on {options['host']}:{options['port']}")
        while not stopped.wait(0.5):
            pass
        simulator.stop()
