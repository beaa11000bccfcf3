"""PostgreSQL stopped during ingest (issue 3): AE while it cannot commit, never AA; recovery on its own.

Runs a throwaway PostgreSQL of its own (initdb into a temporary directory, pg_ctl on a free port, as the
postgres user), never the shared server. The listener is the real `manage.py mllp_listener` subprocess.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from connectors.hl7v2 import ack as acks
from healthsync import benchmark

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or os.geteuid() != 0
    or not glob.glob("/usr/lib/postgresql/*/bin/initdb")
    or shutil.which("runuser") is None,
    reason="needs Linux, root, runuser and PostgreSQL's initdb to run a throwaway server",
)

SCHEMA_SCRIPT = """
import django
django.setup()
from django.apps import apps
from django.db import connection
from healthsync.choices import Direction, Protocol, SystemKind
from healthsync.models import Connector, System
with connection.schema_editor() as editor:
    for model in apps.get_models():
        if model._meta.managed and not model._meta.proxy:
            editor.create_model(model)
system = System.objects.create(code="fault-ehr", name="Fault EHR", kind=SystemKind.EHR)
Connector.objects.create(
    system=system, code="fault-mllp", name="Fault MLLP", direction=Direction.INBOUND,
    protocol=Protocol.HL7V2, config={"accepted_types": ["ADT^A01"]},
)
"""


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary directory, owned and run by the postgres user."""

    def __init__(self) -> None:
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="hs-faults-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = benchmark.free_port()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        log = str(self.dir / "server.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def createdb(self, name: str) -> None:
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.init()
        server.start()
        server.createdb("faults")
        env = {
            **os.environ,
            "DATABASE_URL": server.url("faults"),
            "DJANGO_SETTINGS_MODULE": "healthsync.settings",
        }
        subprocess.run(
            [sys.executable, "-c", SCHEMA_SCRIPT],
            env=env,
            check=True,
            timeout=120,
            cwd=benchmark.manage_py()[:-10],
        )
        yield server
    finally:
        server.remove()


@dataclass
class Sender:
    """One sequential MLLP sender that keeps going through errors and records every answer."""

    port: int
    answers: list[tuple[float, str, str]] = field(default_factory=list)  # (time, control id, MSA-1)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        sock: socket.socket | None = None
        decoder = acks.MLLPDecoder()
        while not self.stop.is_set():
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    decoder = acks.MLLPDecoder()
                n += 1
                control_id = f"FLT{n:06d}"
                sock.sendall(acks.mllp_frame(benchmark.sample_adt(control_id)))
                frames: list[acks.Frame] = []
                while not frames:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("closed")
                    frames = decoder.feed(data)
                payload = frames[0].payload.decode()
                msa = next(s for s in payload.split("\r") if s.startswith("MSA|")).split("|")
                # Fold commit codes (a connector in enhanced mode) onto AA/AE/AR so either mode reads the same.
                code = {"CA": "AA", "CE": "AE", "CR": "AR"}.get(msa[1], msa[1])
                self.answers.append((time.monotonic(), msa[2], code))
            except (OSError, StopIteration):
                self.answers.append((time.monotonic(), "", "no-answer"))
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.05)
            time.sleep(0.005)
        if sock is not None:
            sock.close()

    def codes_since(self, since: float) -> list[str]:
        return [code for at, _, code in list(self.answers) if at >= since]


def wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_postgres_stopped_during_ingest_gives_ae_never_aa_and_the_listener_recovers(
    throwaway_pg: ThrowawayPostgres,
) -> None:
    import psycopg

    url = throwaway_pg.url("faults")
    with benchmark.listener_process("fault-mllp", url=url) as (process, port):
        sender = Sender(port)
        thread = threading.Thread(target=sender.run, daemon=True)
        thread.start()
        try:
            assert wait_until(lambda: sender.codes_since(0).count("AA") >= 20, 60), sender.answers[-5:]

            throwaway_pg.stop("immediate")
            down_since = time.monotonic() + 1.0  # answers to messages already committed may still be AA
            assert wait_until(lambda: sender.codes_since(down_since).count("AE") >= 5, 30)
            while_down = sender.codes_since(down_since)
            assert "AA" not in while_down
            assert process.poll() is None, "the listener must keep running while the database is down"

            throwaway_pg.start()
            back_at = time.monotonic()
            assert wait_until(lambda: "AA" in sender.codes_since(back_at), 60), "no AA after the restart"
            assert wait_until(lambda: sender.codes_since(back_at).count("AA") >= 10, 30)
        finally:
            sender.stop.set()
            thread.join(timeout=30)
        assert process.poll() is None

    acknowledged = {cid for _, cid, code in sender.answers if code == "AA"}
    with psycopg.connect(url) as conn:
        stored = {row[0] for row in conn.execute("SELECT control_id FROM healthsync_message")}
    assert acknowledged, "nothing was acknowledged"
    assert acknowledged <= stored, f"acknowledged but missing: {sorted(acknowledged - stored)[:10]}"
