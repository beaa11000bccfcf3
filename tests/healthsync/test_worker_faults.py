"""Worker faults with real processes on PostgreSQL: kill -9 mid-batch, and four workers on one database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from connectors.simulators import hl7_builder
from healthsync.bench_processing import _bench_connector, load_backlog
from healthsync.choices import MessageStatus
from healthsync.models import CanonicalEvent, Message

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.IS_POSTGRES, reason="worker processes share a PostgreSQL database"),
]

MANAGE = Path(settings.BASE_DIR) / "manage.py"
# Encounters in the four-worker test (four messages each); raise it for a longer soak.
ENCOUNTERS = int(os.getenv("HEALTHSYNC_FAULT_ENCOUNTERS", "50"))


def _worker_env() -> dict[str, str]:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    # A low claim timeout so that a killed worker's messages come back within the test.
    return {**os.environ, "DATABASE_URL": url, "HEALTHSYNC_CLAIM_TIMEOUT": "2", "LOG_LEVEL": "WARNING"}


def _worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(MANAGE), "run_worker", "--idle-sleep", "0.05", *args],
        env=_worker_env(),
        stdout=subprocess.DEVNULL,
    )


def _backlog(encounters: int, *, round_robin: bool) -> list[tuple[str, str, bytes]]:
    """A01, DFT, A03 and late charges per encounter; round robin spreads each encounter over many batches."""
    per_encounter = []
    for n in range(encounters):
        enc = f"E{n}"
        per_encounter.append(
            [
                ("ADT^A01", f"{enc}-1", hl7_builder.adt_a01(encounter_id=enc, control_id=f"{enc}-1")),
                ("DFT^P03", f"{enc}-2", hl7_builder.dft_p03(encounter_id=enc, control_id=f"{enc}-2")),
                ("ADT^A03", f"{enc}-3", hl7_builder.adt_a03(encounter_id=enc, control_id=f"{enc}-3")),
                ("DFT^P03", f"{enc}-4", hl7_builder.dft_p03(encounter_id=enc, control_id=f"{enc}-4")),
            ]
        )
    if round_robin:
        ordered = [chain[i] for i in range(4) for chain in per_encounter]
    else:
        ordered = [item for chain in per_encounter for item in chain]
    return [(kind, control, raw.encode()) for kind, control, raw in ordered]


def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _assert_each_message_processed_exactly_once(total: int) -> None:
    messages = Message.objects.filter(control_id__startswith="E")
    assert messages.count() == total
    assert set(messages.values_list("status", flat=True)) == {MessageStatus.PROCESSED}
    # attempts counts committed processing: one each means no message's work was applied twice.
    assert set(messages.values_list("attempts", flat=True)) == {1}
    events = CanonicalEvent.objects.filter(source_ref__startswith="E")
    assert events.count() == total
    assert sorted(events.values_list("message_id", flat=True)) == sorted(
        messages.values_list("id", flat=True)
    )


def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing() -> None:
    connector = _bench_connector()
    # Enough work that the worker is still busy when it is killed: it processes about a thousand a second.
    rows = _backlog(400, round_robin=False)
    load_backlog(rows, connector)
    connection.close()

    victim = _worker("--batch", "30")
    try:
        assert _wait_for(lambda: Message.objects.filter(status=MessageStatus.PROCESSED).count() >= 10, 60)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    assert Message.objects.filter(status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING]).exists()

    survivors = [_worker("--once", "--batch", "20") for _ in range(2)]
    for proc in survivors:
        assert proc.wait(timeout=90) == 0

    _assert_each_message_processed_exactly_once(len(rows))


def test_four_workers_apply_each_encounter_in_order_without_duplicates() -> None:
    connector = _bench_connector()
    rows = _backlog(ENCOUNTERS, round_robin=True)
    load_backlog(rows, connector)
    connection.close()

    workers = [_worker("--once", "--batch", "15") for _ in range(4)]
    for proc in workers:
        assert proc.wait(timeout=120) == 0

    _assert_each_message_processed_exactly_once(len(rows))
    by_subject: dict[str, list[tuple[object, int]]] = defaultdict(list)
    for subject, recorded_at, message_id in CanonicalEvent.objects.values_list(
        "subject", "recorded_at", "message_id"
    ):
        by_subject[subject].append((recorded_at, message_id))
    assert len(by_subject) == ENCOUNTERS
    for subject, events in by_subject.items():
        applied = [message_id for _, message_id in sorted(events)]
        assert applied == sorted(applied), f"events of {subject} applied out of order"


def test_sigterm_lets_the_current_batch_finish() -> None:
    connector = _bench_connector()
    load_backlog(_backlog(5, round_robin=False), connector)
    connection.close()
    proc = _worker("--batch", "5")
    assert _wait_for(lambda: Message.objects.filter(status=MessageStatus.PROCESSED).exists(), 60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert not Message.objects.filter(status=MessageStatus.PROCESSING).exists()
