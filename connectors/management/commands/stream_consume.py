"""Consume inbound event streams until stopped (or once): store each message, then acknowledge it."""

from __future__ import annotations

import signal
import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from connectors.streams.consumer import consume_all


class Command(BaseCommand):
    help = "Read every enabled inbound stream connector's durable consumer into the message store."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="one round, then exit")
        parser.add_argument("--batch", type=int, default=500)
        parser.add_argument("--wait", type=float, default=1.0, help="seconds to wait for messages per fetch")

    def handle(self, *args: Any, once: bool, batch: int, wait: float, **options: Any) -> None:
        stopping = False

        def stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while True:
            close_old_connections()
            stored = consume_all(batch=batch, timeout=wait)
            if once:
                self.stdout.write(f"stored {stored} stream message(s)")
                return
            if stopping:
                return
            if not stored:
                time.sleep(wait)
