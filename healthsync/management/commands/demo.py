"""Run the whole demo with one command: web console, worker, MLLP listener and the reference systems.

A small supervisor: it prepares the database, starts each process as a child with its output prefixed,
stops them all on Ctrl-C or SIGTERM, and stops them all as well if one of them dies on its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections, connections

from connectors.management.commands.simulate_sftp import PASSWORD_ENV
from healthsync.choices import Direction, Protocol, SystemKind
from healthsync.management.commands.load_demo import DEMO_PASSWORD
from healthsync.tasks import ensure_schedules

if TYPE_CHECKING:
    from connectors.simulators.sftp_server import SftpServer

STOP_TIMEOUT = 15.0
STOP_ORDER = [{"ehr"}, {"mllp"}, {"worker"}, {"rcm", "erp", "sftp"}, {"web"}]
PAYROLL_PATH = "/payroll"
# The demo's own schedule for the labour batch window (production keeps its daily HEALTHSYNC_LABOUR_WINDOW):
# not "job:"-prefixed, so jobs_sync_schedules() leaves it alone.
DEMO_LABOUR_SCHEDULE = "demo:labour-allocation"


@dataclass
class Child:
    """One supervised process and the thread that streams its output."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None


class Command(BaseCommand):
    help = "Run the demo: migrate, load demo data, then web, worker, MLLP listener and simulators (Ctrl-C stops)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Interface every process binds to.")
        parser.add_argument("--port-web", type=int, default=8000)
        parser.add_argument("--port-mllp", type=int, default=2575)
        parser.add_argument("--port-rcm", type=int, default=8101)
        parser.add_argument("--port-erp", type=int, default=8102)
        parser.add_argument("--port-sftp", type=int, default=8122, help="The payroll SFTP drop.")
        parser.add_argument("--rate", type=float, default=2.0, help="EHR messages per second.")
        parser.add_argument("--missing-share", type=float, default=0.2)
        parser.add_argument(
            "--no-simulators", action="store_true", help="Start web, worker and listener only."
        )
        parser.add_argument(
            "--claims",
            choices=("x12", "json"),
            default="x12",
            help="Claims to the RCM as X12 837I answered by 277CA/835 files (default) or as JSON.",
        )
        parser.add_argument(
            "--remit-every", type=float, default=20.0, help="Seconds between the RCM's 835 remittances."
        )
        parser.add_argument(
            "--payroll-every",
            type=float,
            default=120.0,
            help="Seconds between payroll files on the SFTP drop (one monthly period each, up to this month).",
        )
        parser.add_argument(
            "--labour-every",
            type=int,
            default=1,
            help="Minutes between runs of the labour batch window in the demo (0: only its daily window).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._children: list[Child] = []
        if options["rate"] <= 0:
            raise CommandError("--rate must be positive")
        if not 0 <= options["missing_share"] <= 1:
            raise CommandError("--missing-share must be between 0 and 1")
        if options["payroll_every"] <= 0:
            raise CommandError("--payroll-every must be a positive number of seconds")
        if options["labour_every"] < 0:
            raise CommandError("--labour-every must be 0 or a number of minutes")
        host = options["host"]
        ports = {k: options[f"port_{k}"] for k in ("web", "mllp", "rcm", "erp", "sftp")}
        wanted = ["web", "mllp"] + ([] if options["no_simulators"] else ["rcm", "erp", "sftp"])
        busy = [f"{k} ({ports[k]})" for k in wanted if _port_in_use(host, ports[k])]
        if busy:
            raise CommandError(
                f"Port(s) already in use on {host}: {', '.join(busy)}. Is another demo running? "
                "Choose others with --port-web/--port-mllp/--port-rcm/--port-erp/--port-sftp."
            )

        Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # whitenoise warns when it is missing
        self.say(f"preparing the database ({settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]})")
        call_command("migrate", interactive=False, verbosity=0)
        mailbox = str(_data_dir() / f"rcm-mailbox-{ports['rcm']}")
        payroll: dict[str, Any] = {}
        if not options["no_simulators"]:
            drop = _payroll_drop(host, ports["sftp"])
            payroll = {
                "payroll_source": drop.connector_config(PAYROLL_PATH),
                "payroll_secrets": drop.secrets(),
            }
        call_command(
            "load_demo",
            "--claims",
            options["claims"],
            "--rcm-mailbox",
            mailbox,
            stdout=self.stdout,
            **payroll,
        )
        inbound = self._point_destinations(host, ports["rcm"], ports["erp"])
        # Safety-net schedules (work is also enqueued on commit), upserted by name.
        ensure_schedules()
        self._labour_window(options["labour_every"] if payroll else 0)
        close_old_connections()
        for conn in connections.all():
            conn.close()

        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        self._start("web", [*manage, "runserver", f"{host}:{ports['web']}", "--noreload"])
        if payroll:
            # Up before the worker, whose first files-poll would otherwise find the payroll drop unreachable.
            sftp = [*manage, "simulate_sftp", "--host", host, "--port", str(ports["sftp"])]
            sftp += ["--root", drop.root, "--host-key", _host_key_file(ports["sftp"])]
            sftp += ["--payroll-every", str(options["payroll_every"]), "--payroll-path", PAYROLL_PATH]
            self._start("sftp", sftp, env={PASSWORD_ENV: drop.password})
            self._wait_for_port(host, ports["sftp"], "the SFTP drop")
        self._start("worker", [*manage, "qcluster"])
        listener = [*manage, "mllp_listener", "--host", host, "--port", str(ports["mllp"])]
        self._start("mllp", listener + (["--connector", inbound] if inbound else []))
        if not options["no_simulators"]:
            rcm = [*manage, "simulate_rcm", "--host", host, "--port", str(ports["rcm"])]
            if options["claims"] == "x12":
                # The payer answers as a clearinghouse does: files in a mailbox that rcm-remits-x12 polls.
                rcm += ["--mailbox", mailbox, "--remit-every", str(options["remit_every"])]
            self._start("rcm", rcm)
            self._start("erp", [*manage, "simulate_erp", "--host", host, "--port", str(ports["erp"])])
            # The EHR starts once the listener answers, so its first messages are not retries.
            if self._wait_for_port(host, ports["mllp"], "the MLLP listener"):
                ehr = ["simulate_ehr", "--host", host, "--port", str(ports["mllp"])]
                ehr += ["--rate", str(options["rate"]), "--missing-share", str(options["missing_share"])]
                self._start("ehr", [*manage, *ehr])
        if self._wait_for_port(host, ports["web"], "the web console"):
            self.say(
                f"ready: console http://{host}:{ports['web']}/ (demo users in README.md, password "
                f"{DEMO_PASSWORD}); MLLP on {host}:{ports['mllp']}"
                + (f"; payroll SFTP drop on {host}:{ports['sftp']}" if payroll else "")
                + ". Ctrl-C stops everything."
            )

        failed = self._supervise()
        self._stop_all()
        if failed:
            raise CommandError(f"{failed} stopped unexpectedly; the demo was shut down.", returncode=1)
        self.say("all processes stopped")

    # -- processes ---------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        if self._stop.is_set():
            return
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # Each child leads its own process group: Ctrl-C in the terminal reaches only the supervisor,
        # which then stops the children in order, and a stuck child is killed with everything it forked.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=settings.BASE_DIR,
            start_new_session=True,
        )
        child = Child(name=name, argv=argv, proc=proc)
        assert proc.stdout is not None
        child.reader = threading.Thread(target=self._pump, args=(name, proc.stdout), daemon=True)
        child.reader.start()
        self._children.append(child)
        self.say(f"started {name} (pid {proc.pid})")

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._write(f"{name:<6} | {line.decode('utf-8', errors='replace').rstrip()}")
        stream.close()

    def _supervise(self) -> str | None:
        """Wait for a stop signal or an unexpected exit; return the name of a child that died, if any."""
        while not self._stop.wait(0.25):
            for child in self._children:
                assert child.proc is not None
                code = child.proc.poll()
                if code is not None:
                    self.say(
                        f"{child.name} (pid {child.proc.pid}) exited with code {code}; stopping the rest"
                    )
                    return child.name
        return None

    def _stop_all(self) -> None:
        # In stages, so nothing is cut off mid-flow: the EHR stops sending before the listener goes, the
        # listener before the worker, and the worker finishes its deliveries before RCM and ERP go away.
        for stage in STOP_ORDER:
            group = [c for c in self._children if c.name in stage and c.proc is not None]
            for child in group:
                assert child.proc is not None
                if child.proc.poll() is None:
                    child.proc.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in group:
                assert child.proc is not None
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(f"{child.name} (pid {child.proc.pid}) did not stop in time; killing it")
                    _kill_group(child.proc.pid)
                    child.proc.wait()
                # Whatever the child forked (the worker's pool) goes with it.
                _kill_group(child.proc.pid)
                if child.reader is not None:
                    child.reader.join(timeout=2)
                code = child.proc.returncode
                self.say(
                    f"{child.name} stopped"
                    + (f" (exit code {code})" if code not in (0, -signal.SIGTERM) else "")
                )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stop.is_set():
            self._write(f"demo   | {signal.Signals(signum).name} received; stopping")
        self._stop.set()

    def _wait_for_port(self, host: str, port: int, what: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            if _port_in_use(host, port):
                return True
            if any(c.proc is not None and c.proc.poll() is not None for c in self._children):
                return False  # the supervisor loop reports which one
            if time.monotonic() > deadline:
                self.say(f"{what} is not answering on {host}:{port} after {timeout:.0f} s")
                return False
            time.sleep(0.2)
        return False

    def _point_destinations(self, host: str, port_rcm: int, port_erp: int) -> str | None:
        """Aim every RCM and ERP connector (JSON base_url or X12/SOAP url) at this run's simulators.

        Returns the inbound HL7 connector the listener stores for.
        """
        from urllib.parse import urlsplit, urlunsplit

        from healthsync.models import Connector
        from healthsync.seed import connector_definitions

        ports = {SystemKind.RCM: port_rcm, SystemKind.ERP: port_erp}
        inbound = next(
            (
                spec["code"]
                for spec in connector_definitions()
                if spec["direction"] == Direction.INBOUND and spec["protocol"] == Protocol.HL7V2
            ),
            None,
        )
        outbound = Connector.objects.filter(direction=Direction.OUTBOUND, system__kind__in=list(ports))
        for connector in outbound.select_related("system"):
            config = dict(connector.config or {})
            for key in ("base_url", "url"):
                if not isinstance(config.get(key), str) or not config[key].startswith("http"):
                    continue
                parts = urlsplit(config[key])
                config[key] = urlunsplit(parts._replace(netloc=f"{host}:{ports[connector.system.kind]}"))
            if config != connector.config:
                connector.config = config
                connector.save(update_fields=["config", "updated_at"])
                self.say(f"{connector.code} now delivers to {host}:{ports[connector.system.kind]}")
        return inbound

    def _labour_window(self, minutes: int) -> None:
        """Run the labour batch window every `minutes` so the demo's payroll files post within minutes.

        Production allocates once a day (HEALTHSYNC_LABOUR_WINDOW); the demo adds its own schedule running
        the same job, so each run is recorded like the nightly one. 0 removes it.
        """
        from django_q.models import Schedule

        schedules = Schedule.objects.filter(name=DEMO_LABOUR_SCHEDULE)
        if not minutes:
            schedules.delete()
            return
        wanted = {
            "func": "healthsync.jobs.job_run",
            "args": repr("labour-allocation"),
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
        }
        schedule = schedules.order_by("id").first()
        if schedule is None:
            Schedule.objects.create(name=DEMO_LABOUR_SCHEDULE, **wanted)
        else:
            Schedule.objects.filter(pk=schedule.pk).update(**wanted)
        self.say(f"the labour batch window runs every {minutes} min in the demo (daily in production)")

    # -- output ------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self._write(f"demo   | {text}")

    def _write(self, line: str) -> None:
        with self._lock:
            self.stdout.write(line)
            self.stdout.flush()


def _data_dir() -> Path:
    """Where this run keeps its files (payer mailbox, SFTP drop): next to the demo's SQLite file, else var/.

    Each is named after its port, so two demos on one machine never read each other's files."""
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3") and str(database["NAME"]) not in ("", ":memory:"):
        return Path(str(database["NAME"])).parent
    return Path(settings.BASE_DIR) / "var"


def _host_key_file(port_sftp: int) -> str:
    # Outside the served root: an SFTP client must not be able to download the server's private key.
    return str(_data_dir() / f"sftp-{port_sftp}-host-key")


def _payroll_drop(host: str, port_sftp: int) -> SftpServer:
    """The payroll SFTP drop of this run, not started (the `sftp` child serves it): its root, host key and a
    fresh password, which the payroll connector keeps as an encrypted secret."""
    from connectors.simulators.sftp_server import SftpServer, host_key_from_file

    root = _data_dir() / f"sftp-{port_sftp}"
    (root / PAYROLL_PATH.strip("/")).mkdir(parents=True, exist_ok=True)
    return SftpServer(
        str(root),
        "127.0.0.1" if host in ("0.0.0.0", "") else host,  # where the worker connects to
        port_sftp,
        password=secrets.token_urlsafe(18),
        host_key=host_key_from_file(_host_key_file(port_sftp)),
    )


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
