"""The demo's payroll system: files dropped onto a real SFTP server (port 0), picked up by the files-poll job,
allocated by the labour batch window and posted to a real ERP simulator, once per period."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from connectors.files.transport import open_transport
from connectors.simulators.erp import ErpSimulator
from connectors.simulators.payroll import ALLOCATION_RULES, DEPARTMENTS, PayrollDrop, payroll_csv
from connectors.simulators.sftp_server import SftpServer
from healthsync.choices import MessageStatus, RunStatus
from healthsync.jobs import job_run
from healthsync.models import Connector, ExceptionItem, Message, SyncJobRun
from healthsync.pipeline import process_pending
from healthsync.seed_workflows import PAYROLL_CONNECTOR, payroll_route
from tests.pipeline_support import commits
from tests.workflows.support import workflow_destinations
from workflows.labour import read_payroll_csv
from workflows.models import AllocationRule, WorkflowRun

FEBRUARY = date(2026, 2, 14)


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[SftpServer]:
    root = tmp_path / "sftp"
    (root / "payroll").mkdir(parents=True)
    with SftpServer(str(root), password="payroll-s3cret") as server:
        yield server


@pytest.fixture
def erp() -> Iterator[ErpSimulator]:
    with workflow_destinations() as (_, erp):
        for department, targets in ALLOCATION_RULES.items():
            for cost_center, share in targets:
                AllocationRule.objects.create(department=department, cost_center=cost_center, share=share)
        yield erp


def _poll_and_process() -> None:
    with commits():
        job_run("files-poll")
        process_pending()


def _file_cost(period: str) -> Decimal:
    rows = csv.DictReader(io.StringIO(payroll_csv(period)))
    return sum(
        (Decimal(r["gross_pay"]) + Decimal(r["employer_taxes"]) + Decimal(r["benefits"]) for r in rows),
        Decimal("0"),
    )


def test_a_period_reads_the_same_every_time_and_every_department_has_rules() -> None:
    assert payroll_csv("2026-01") == payroll_csv("2026-01") != payroll_csv("2026-02")
    lines = read_payroll_csv(payroll_csv("2026-01"))
    assert {line.department for line in lines} == set(DEPARTMENTS) == set(ALLOCATION_RULES)
    assert {line.period for line in lines} == {"2026-01"}
    for targets in ALLOCATION_RULES.values():
        assert sum(share for _, share in targets) == 100


def test_the_drop_catches_up_to_the_current_month_then_waits_for_the_next(tmp_path: Path) -> None:
    today = [FEBRUARY]
    drop = PayrollDrop(str(tmp_path), months_back=2, today=lambda: today[0])

    assert [drop.tick(), drop.tick(), drop.tick(), drop.tick()] == [
        ["payroll-2025-12.csv"],
        ["payroll-2026-01.csv"],
        ["payroll-2026-02.csv"],
        [],
    ]
    today[0] = date(2026, 3, 1)
    assert drop.tick() == ["payroll-2026-03.csv"]
    months = ["2025-12", "2026-01", "2026-02", "2026-03"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"payroll-{m}.csv" for m in months]


@pytest.mark.django_db
def test_payroll_dropped_over_sftp_posts_one_labour_journal_per_period(
    sftp: SftpServer, erp: ErpSimulator
) -> None:
    location = sftp.connector_config("/payroll")
    connector = payroll_route(source=location, secrets=sftp.secrets())
    assert "payroll-s3cret" not in str(connector.config)
    assert "payroll-s3cret" not in connector.secrets_token  # encrypted at rest
    drop = PayrollDrop(location, secrets=sftp.secrets(), months_back=1, today=lambda: FEBRUARY)
    assert drop.tick(at_most=5) == ["payroll-2026-01.csv", "payroll-2026-02.csv"]

    _poll_and_process()
    stored = Message.objects.filter(connector__code=PAYROLL_CONNECTOR)
    assert sorted(stored.values_list("status", flat=True)) == [MessageStatus.PROCESSED] * 2
    assert erp.entry_count == 0  # the files wait for the batch window

    with commits():
        job_id = job_run("labour-allocation")
    assert SyncJobRun.objects.get(pk=job_id).counts == {"allocated": 2}
    entries = {e["entry"]["period"]: e["entry"] for e in erp.entries.values()}
    assert sorted(entries) == ["2026-01", "2026-02"]
    every_cost_center = {center for targets in ALLOCATION_RULES.values() for center, _ in targets}
    for period, entry in entries.items():
        assert entry["external_reference"] == f"payroll:labour:{period}:1"
        debits = {
            line["cost_center"]: Decimal(line["debit"]) for line in entry["lines"] if line["cost_center"]
        }
        assert set(debits) == every_cost_center
        assert sum(debits.values()) == _file_cost(period) == Decimal(entry["lines"][-1]["credit"])
        run = WorkflowRun.objects.get(workflow="labour_allocation", business_key=period)
        assert run.status == RunStatus.COMPLETED
    assert list((Path(sftp.root) / "payroll").glob("*.csv")) == []  # all taken to the archive

    # The payroll system starts again and resends January: a duplicate, and the window posts nothing new.
    again = PayrollDrop(location, secrets=sftp.secrets(), months_back=1, today=lambda: FEBRUARY)
    assert again.tick() == ["payroll-2026-01.csv"]
    _poll_and_process()
    with commits():
        job_run("labour-allocation")
    with commits():
        job_run("labour-allocation")
    assert erp.entry_count == 2
    assert not ExceptionItem.objects.exists()


@pytest.mark.slow
def test_simulate_sftp_serves_the_drop_and_the_payroll_system_uploads_to_it(tmp_path: Path) -> None:
    password = "command-s3cret"
    command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "simulate_sftp", "--port", "0"]
    command += ["--root", str(tmp_path / "root"), "--host-key", str(tmp_path / "host-key")]
    command += ["--payroll-every", "3600", "--payroll-months-back", "0"]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HEALTHSYNC_SFTP_PASSWORD": password, "PYTHONUNBUFFERED": "1"},
        cwd=settings.BASE_DIR,
    )
    lines: list[str] = []
    dropped = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            lines.append(raw.decode(errors="replace").rstrip())
            if "payroll file" in lines[-1]:
                dropped.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert dropped.wait(60), "\n".join(lines)
        pattern = re.compile(r"SFTP simulator listening on ([\d.]+):(\d+).*host key (.+)$")
        listening = next(m for m in map(pattern.search, lines) if m)
        location = {
            "type": "sftp",
            "host": listening[1],
            "port": int(listening[2]),
            "username": "payroll",
            "host_key": listening[3],
            "path": "/payroll",
        }
        with open_transport(location, secrets={"sftp_password": password}) as transport:
            (entry,) = transport.list()
            assert re.fullmatch(r"payroll-\d{4}-\d{2}\.csv", entry.name)
            read_payroll_csv(transport.read(entry.name).decode())
        assert (tmp_path / "host-key").stat().st_mode & 0o077 == 0  # the private key is the owner's only
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        reader.join(5)


@pytest.mark.django_db
def test_load_demo_points_the_payroll_connector_at_a_folder_or_the_demos_sftp_drop(
    sftp: SftpServer, tmp_path: Path
) -> None:
    call_command("load_demo", "--no-users", "--payroll-drop", str(tmp_path / "drop"), stdout=io.StringIO())
    connector = Connector.objects.get(code=PAYROLL_CONNECTOR)
    assert connector.is_enabled and connector.config["source"] == {
        "type": "folder",
        "path": str(tmp_path / "drop"),
    }
    assert (tmp_path / "drop").is_dir()

    # As `demo` calls it: the SFTP location in the config, the password only in the encrypted secrets.
    location = sftp.connector_config("/payroll")
    out = io.StringIO()
    call_command(
        "load_demo", "--no-users", payroll_source=location, payroll_secrets=sftp.secrets(), stdout=out
    )
    connector = Connector.objects.get(code=PAYROLL_CONNECTOR)
    assert connector.config["source"] == location and connector.secrets == sftp.secrets()
    assert f"sftp://127.0.0.1:{sftp.port}/payroll" in out.getvalue()
    rules = AllocationRule.objects.count()
    assert rules == sum(len(targets) for targets in ALLOCATION_RULES.values())
    call_command("load_demo", "--no-users", payroll_source=location, stdout=io.StringIO())
    assert AllocationRule.objects.count() == rules
    assert Connector.objects.get(code=PAYROLL_CONNECTOR).secrets == sftp.secrets()  # kept when none is given
