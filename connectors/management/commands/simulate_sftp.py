"""Run the SFTP simulator, with a payroll system dropping one labour-cost file per pay period onto it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connectors.simulators.payroll import PayrollDrop
from connectors.simulators.sftp_server import SftpServer, host_key_from_file

# The login comes from the environment, not the command line, where any local user could read it in `ps`.
PASSWORD_ENV = "HEALTHSYNC_SFTP_PASSWORD"  # noqa: S105 - the variable's name, not a password


class Command(BaseCommand):
    help = (
        "Run an SFTP server (password login) serving --root. With --payroll-every N a payroll system uploads "
        f"a payroll file into --payroll-path every N seconds. The password is ${PASSWORD_ENV} (default: the "
        "simulator's demo password)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8122, help="0 picks a free port (printed).")
        parser.add_argument("--root", default="var/sftp", help="Folder served as / (created if missing).")
        parser.add_argument("--username", default="payroll")
        parser.add_argument(
            "--host-key",
            default="",
            help="Private host key file, made on first use; keep it outside --root. Default: a new key per run.",
        )
        parser.add_argument(
            "--payroll-every",
            type=float,
            default=0.0,
            help="Seconds between payroll files (0: no payroll system, the server only).",
        )
        parser.add_argument("--payroll-path", default="/payroll", help="Folder the payroll files go to.")
        parser.add_argument(
            "--payroll-months-back",
            type=int,
            default=2,
            help="The first file is this many months before the current one; one per tick up to this month.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["payroll_every"] < 0:
            raise CommandError("--payroll-every must be 0 or a number of seconds")
        if options["payroll_months_back"] < 0:
            raise CommandError("--payroll-months-back must be 0 or more")
        # asyncssh narrates every connection at INFO; the demo's output wants one line per payroll file.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        root = Path(options["root"]).resolve()
        key_file = options["host_key"]
        if key_file and Path(key_file).resolve().is_relative_to(root):
            raise CommandError("--host-key must be outside --root, or SFTP clients could download it")
        payroll_path = "/" + options["payroll_path"].strip("/")
        (root / payroll_path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        server = SftpServer(
            str(root),
            options["host"],
            options["port"],
            username=options["username"],
            host_key=host_key_from_file(key_file) if key_file else None,
            **({"password": os.environ[PASSWORD_ENV]} if os.environ.get(PASSWORD_ENV) else {}),
        )
        stopped = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            server.start()
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc.strerror}"
            ) from None
        self.stdout.write(
            f"SFTP simulator listening on {server.host}:{server.port} (user {server.username}), root {root}; "
            f"host key {server.host_key}"
        )
        interval = options["payroll_every"]
        drop = None
        if interval:
            # The payroll system is an SFTP client like any other: it logs in and uploads to this server.
            location = server.connector_config(payroll_path)
            if location["host"] in ("0.0.0.0", "::", ""):  # a wildcard listener: connect over loopback
                location["host"] = "127.0.0.1"
            drop = PayrollDrop(location, secrets=server.secrets(), months_back=options["payroll_months_back"])
            self.stdout.write(f"payroll system drops a file into {payroll_path} every {interval:g} s")
        while True:
            if drop is not None:
                for name in drop.tick():
                    self.stdout.write(f"payroll file {name} dropped into {payroll_path}")
            if stopped.wait(interval or 0.5):
                break
        server.stop()
