"""Run the inbound HL7 v2 MLLP listener in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connectors.hl7v2.listener import run


class Command(BaseCommand):
    help = "Receive HL7 v2 over MLLP: store each message, then acknowledge it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=2575)
        parser.add_argument("--connector", default=None, help="Code of the inbound HL7 v2 connector.")
        parser.add_argument(
            "--processes", type=int, default=1, help="Listener processes sharing the port (SO_REUSEPORT)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 <= options["port"] < 65536:
            raise CommandError("--port must be between 0 and 65535")
        try:
            run(
                host=options["host"],
                port=options["port"],
                connector_code=options["connector"],
                processes=options["processes"],
            )
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"Cannot listen on {options['host']}:{options['port']}: {exc}") from exc
