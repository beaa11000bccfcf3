"""One management command shape for every HTTP simulator: start it, wait for SIGINT/SIGTERM, stop it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
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
        self.serve(self.simulator_class(options["host"], options["port"]), options)

    def serve(
        self,
        simulator: Any,
        options: dict[str, Any],
        *,
        every: float = 0.5,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Start `simulator`, call `tick` every `every` seconds until SIGINT/SIGTERM, then stop it."""
        stopped = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        simulator.start()
        self.stdout.write(
            f"{self.label} simulator listening on {options['host']}:{options['port']}{self.listening_detail(options)}"
        )
        while not stopped.wait(every):
            if tick is not None:
                tick()
        simulator.stop()

    def listening_detail(self, options: dict[str, Any]) -> str:
        """What the start-up line adds after the address (e.g. a mailbox folder)."""
        return ""
