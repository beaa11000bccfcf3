"""`manage.py demo` end to end: real processes, real sockets, a real SQLite file; then Ctrl-C stops it all."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from hl7.client import MLLPClient

from connectors.simulators import hl7_builder
from healthsync.management.commands.load_demo import DEMO_PASSWORD

pytestmark = pytest.mark.slow

DEADLINE_SECONDS = 90
# The payroll file waits for the worker's scheduler: the files-poll job, then the labour window (1 min each).
PAYROLL_DEADLINE_SECONDS = 240


def _free_ports(count: int) -> list[int]:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Demo:
    """The demo supervisor as a subprocess, with its output collected line by line."""

    def __init__(self, tmp_path: Path, *extra: str, web_port: int | None = None) -> None:
        self.db = tmp_path / "db.sqlite3"
        self.web, self.mllp, self.rcm, self.erp, self.sftp = _free_ports(5)
        self.web = web_port or self.web
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{self.db}", "PYTHONUNBUFFERED": "1"}
        env.pop("Q_SYNC", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(settings.BASE_DIR / "manage.py"),
                "demo",
                *("--port-web", str(self.web), "--port-mllp", str(self.mllp)),
                *("--port-rcm", str(self.rcm), "--port-erp", str(self.erp)),
                *("--port-sftp", str(self.sftp)),
                *("--rate", "25", "--missing-share", "0.3"),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=settings.BASE_DIR,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self.lines.append(line.decode("utf-8", errors="replace").rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def children(self) -> dict[str, int]:
        return {m[1]: int(m[2]) for m in re.finditer(r"started (\w+) \(pid (\d+)\)", self.output)}

    def count(self, sql: str) -> int:
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
                return conn.execute(sql).fetchone()[0]
        except sqlite3.OperationalError:  # not migrated yet, or the file does not exist yet
            return 0

    def text(self, sql: str) -> str:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
            return str(conn.execute(sql).fetchone()[0])

    def kill(self) -> None:
        for pid in [*self.children().values(), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.kill()
            running.proc.wait(10)


def _wait_for(demo: Demo, what: str, condition: Callable[[], bool], deadline: float) -> None:
    while time.monotonic() < deadline:
        if condition():
            return
        if demo.proc.poll() is not None:
            pytest.fail(f"the demo exited ({demo.proc.returncode}) before {what}:\n{demo.output[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n{demo.output[-4000:]}")


def _login(base: str, username: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=10)
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, "the login form carries a CSRF token"
    reply = client.post(
        "/accounts/login/",
        data={"username": username, "password": DEMO_PASSWORD, "csrfmiddlewaretoken": token[1]},
        headers={"Referer": f"{base}/accounts/login/"},
    )
    assert reply.status_code == 302, f"{username} could not log in"
    return client


def test_the_demo_runs_the_whole_flow_and_stops_cleanly_on_ctrl_c(demo: Demo) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS

    _wait_for(demo, "the demo to be ready", lambda: "ready: console" in demo.output, deadline)
    assert set(demo.children()) == {"web", "worker", "mllp", "rcm", "erp", "ehr", "sftp"}
    assert f"payroll SFTP drop on 127.0.0.1:{demo.sftp}" in demo.output
    _wait_for(
        demo,
        "processed messages with canonical events",
        lambda: (
            demo.count("select count(*) from healthsync_message where status = 'processed'") > 0
            and demo.count("select count(*) from healthsync_canonicalevent") > 0
        ),
        deadline,
    )
    _wait_for(
        demo,
        "a claim submitted to the RCM",
        lambda: demo.count("select count(*) from workflows_workflowstep where step = 'claim_submitted'") > 0,
        deadline,
    )
    _wait_for(
        demo,
        "an open exception",
        lambda: demo.count("select count(*) from healthsync_exceptionitem where status = 'open'") > 0,
        deadline,
    )

    base = f"http://127.0.0.1:{demo.web}"
    executive, analyst = _login(base, "exec"), _login(base, "rcm")
    try:
        assert executive.get("/dashboard/").status_code == 200
        assert analyst.get("/exceptions/").status_code == 200
    finally:
        executive.close()
        analyst.close()

    # The payroll system's file crosses the SFTP drop, the files-poll job and the labour window to the ERP.
    _wait_for(
        demo,
        "a labour cost journal posted from a payroll file",
        lambda: (
            demo.count(
                "select count(*) from workflows_workflowstep s join workflows_workflowrun r on r.id = s.run_id"
                " where r.workflow = 'labour_allocation' and s.step = 'journal_posted'"
            )
            > 0
        ),
        time.monotonic() + PAYROLL_DEADLINE_SECONDS,
    )
    config = demo.text("select config from healthsync_connector where code = 'payroll-drop'")
    assert '"type": "sftp"' in config and "password" not in config  # the login is an encrypted secret

    control_id = uuid.uuid4().hex[:20].upper()
    with MLLPClient("127.0.0.1", demo.mllp) as client:
        ack = client.send_message(
            hl7_builder.adt_a03(control_id=control_id, encounter_id=f"T{control_id[:10]}")
        )
    assert b"MSA|AA|" + control_id.encode() in ack

    children = demo.children()
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(timeout=60) == 0, demo.output[-4000:]
    for name, pid in children.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert f"{name} stopped" in demo.output
    assert "database is locked" not in demo.output
    assert "Traceback" not in demo.output


def test_when_one_process_dies_the_demo_stops_the_others_and_fails(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--no-simulators")
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        _wait_for(demo, "the demo to be ready", lambda: "ready: console" in demo.output, deadline)
        children = demo.children()
        assert set(children) == {"web", "worker", "mllp"}

        os.kill(children["mllp"], signal.SIGKILL)

        assert demo.proc.wait(timeout=60) == 1
        assert "mllp" in demo.output and "stopping the rest" in demo.output
        for pid in children.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if demo.proc.poll() is None:
            demo.kill()


def test_it_refuses_a_port_that_is_taken_before_touching_the_database(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        demo = Demo(tmp_path, web_port=taken.getsockname()[1])
        assert demo.proc.wait(timeout=60) == 1
    demo._reader.join(5)
    assert "already in use" in demo.output
    assert not demo.db.exists()
