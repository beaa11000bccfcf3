"""One management command shape for every HTTP simulator: start it, wait for SIGINT/SIGTERM, stop it."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandParser


class SimulatorCommand(BaseCommand):
    simulator_class: ClassVar[type]
    label: ClassVar[str]
    default_port: ClassVar[int]

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=self.default_port)

    def handle(self, *args: Any, **options: Any) -> None:
        simulator = self.simulator_class(options["host"], options["port"])
        stopped = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        simulator.start()
        self.stdout.write(f"{self.label} simulator listening on {options['host']}:{options['port']}")
        while not stopped.wait(0.5):
            pass
        simulator.stop()
