"""Pick files up from a connector's folder or SFTP drop: once, or every --interval seconds until stopped."""

from __future__ import annotations

import signal
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from connectors.files.poller import poll_connector
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.models import Connector


class Command(BaseCommand):
    help = "Poll an inbound files (or X12) connector's pick-up folder and store each ready file as a message."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--connector", required=True, help="Connector code")
        parser.add_argument("--once", action="store_true", help="Poll once and exit")
        parser.add_argument("--interval", type=float, default=30.0, help="Seconds between polls")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            connector = Connector.objects.get(
                code=options["connector"],
                direction=Direction.INBOUND,
                protocol__in=[Protocol.FILE, Protocol.X12],
            )
        except Connector.DoesNotExist:
            raise CommandError(f"No inbound files or X12 connector {options['connector']!r}") from None
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        while True:
            try:
                report = poll_connector(connector)
            except ConnectorError as exc:
                if options["once"]:
                    raise CommandError(exc.message) from None
                self.stderr.write(f"poll failed: {exc.message}")
            else:
                self.stdout.write(
                    f"{connector.code}: {len(report.stored)} stored, {len(report.failed)} to error, "
                    f"{len(report.waiting)} waiting"
                )
            if options["once"] or stopping:
                return
            close_old_connections()
            deadline = time.monotonic() + options["interval"]
            while time.monotonic() < deadline and not stopping:
                time.sleep(0.2)
            if stopping:
                return
            connector.refresh_from_db()
