"""Processing benchmark: drain a backlog of stored messages with N `run_worker --once` processes.

`measure_processing(total=50000, workers=2)` loads `total` messages (admission, charges, discharge per
encounter, a share of them incomplete so billing stops on them) on the seeded reference configuration, starts
`workers` worker processes against the same database and returns the rates as a dict of numbers. The
benchmark command (`manage.py benchmark`) prints it beside the database's own batched-insert rate.
Everything it created is removed afterwards unless `cleanup=False`.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Min

from connectors.simulators import hl7_builder
from healthsync.choices import Direction, Lane, MessageStatus, Protocol
from healthsync.models import CanonicalEvent, Connector, Delivery, ExceptionItem, Message, System
from healthsync.models.core import MessageKey
from healthsync.pipeline import triage

BENCH_CONNECTOR = "bench-ehr"


def build_backlog(total: int, *, prefix: str, missing_share: float = 0.2) -> list[tuple[str, str, bytes]]:
    """(message type, control id, raw) in send order: A01, DFT, A03 per encounter, `total` in all."""
    templates = {
        "complete": [
            (
                "ADT^A01",
                hl7_builder.adt_a01(encounter_id="@ENC@", control_id="@CTL@", account_number="@ENC@"),
            ),
            (
                "DFT^P03",
                hl7_builder.dft_p03(encounter_id="@ENC@", control_id="@CTL@", account_number="@ENC@"),
            ),
            (
                "ADT^A03",
                hl7_builder.adt_a03(encounter_id="@ENC@", control_id="@CTL@", account_number="@ENC@"),
            ),
        ],
        "incomplete": [
            (
                "ADT^A01",
                hl7_builder.adt_a01(encounter_id="@ENC@", control_id="@CTL@", include_insurance=False),
            ),
            ("DFT^P03", hl7_builder.dft_p03(encounter_id="@ENC@", control_id="@CTL@")),
            (
                "ADT^A03",
                hl7_builder.adt_a03(encounter_id="@ENC@", control_id="@CTL@", include_insurance=False),
            ),
        ],
    }
    every = round(1 / missing_share) if missing_share > 0 else 0
    out: list[tuple[str, str, bytes]] = []
    encounter = 0
    while len(out) < total:
        encounter += 1
        kind = "incomplete" if every and encounter % every == 0 else "complete"
        for n, (message_type, text) in enumerate(templates[kind]):
            if len(out) >= total:
                break
            control = f"{prefix}-{encounter}-{n}"
            raw = text.replace("@ENC@", f"{prefix}E{encounter}").replace("@CTL@", control)
            out.append((message_type, control, raw.encode()))
    return out


def _bench_connector() -> Connector:
    from healthsync.seed import seed_reference_config

    seed_reference_config()
    system = System.objects.get(code="ehr-main")
    connector, _ = Connector.objects.get_or_create(
        code=BENCH_CONNECTOR,
        defaults={
            "system": system,
            "name": "Benchmark ADT/DFT feed",
            "direction": Direction.INBOUND,
            "protocol": Protocol.HL7V2,
            "lane": Lane.CLINICAL,
            "config": {},
        },
    )
    return connector


def load_backlog(rows: list[tuple[str, str, bytes]], connector: Connector) -> None:
    """Store the backlog as the listener stores received messages: with their dedupe keys (MessageKey rows),
    sequence keys and lanes (healthsync.ingest reads them on storing).

    COPY on PostgreSQL, bulk_create elsewhere; the keys follow in one statement per load.
    """
    from django.utils import timezone

    now = timezone.now()
    with transaction.atomic():
        _load_messages(rows, connector, now)
        # Each first copy owns its (connector, sender, control id) key, as ingest writes it.
        MessageKey.objects.bulk_create(
            [
                MessageKey(key=key, message_id=message_id)
                for key, message_id in Message.objects.filter(
                    connector=connector, received_at=now, dedupe_key__isnull=False
                ).values_list("dedupe_key", "id")
            ],
            batch_size=5000,
            ignore_conflicts=True,
        )


def _load_messages(rows: list[tuple[str, str, bytes]], connector: Connector, now: Any) -> None:
    triaged = [
        triage(raw, message_type=message_type, connector_lane=connector.lane) for message_type, _, raw in rows
    ]
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(Message._meta.db_table)
        columns = (
            "connector_id, received_at, raw, sha256, sender, control_id, message_type, dedupe_key, status, "
            "lane, sequence_key, business_key, error, attempts, claimed_by"
        )
        sql = f"COPY {table} ({columns}) FROM STDIN"
        with transaction.atomic(), connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
            for (message_type, control, raw), (sequence_key, lane) in zip(rows, triaged, strict=True):
                copy.write_row(
                    [
                        connector.pk,
                        now,
                        raw,
                        hashlib.sha256(raw).hexdigest(),
                        "EPIC^GENHOSP",
                        control,
                        message_type,
                        f"{connector.pk}|EPIC^GENHOSP|{control}",
                        MessageStatus.RECEIVED,
                        lane,
                        sequence_key,
                        "",
                        "",
                        0,
                        "",
                    ]
                )
        return
    Message.objects.bulk_create(
        [
            Message(
                connector=connector,
                received_at=now,
                raw=raw,
                sha256=hashlib.sha256(raw).hexdigest(),
                sender="EPIC^GENHOSP",
                control_id=control,
                message_type=message_type,
                dedupe_key=f"{connector.pk}|EPIC^GENHOSP|{control}",
                lane=lane,
                sequence_key=sequence_key,
            )
            for (message_type, control, raw), (sequence_key, lane) in zip(rows, triaged, strict=True)
        ],
        batch_size=1000,
    )


def measure_processing(
    total: int = 50000,
    workers: int = 2,
    *,
    batch: int = 200,
    missing_share: float = 0.2,
    cleanup: bool = True,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Load a backlog of `total` messages and drain it with `workers` processes; returns the figures.

    Keys: process_msgs_per_s (first claim → last message done), process_wall_msgs_per_s (including worker
    start-up), process_seconds, process_total, process_workers, process_events, process_failed,
    process_deliveries, load_msgs_per_s, process_worker_cpu_ms_per_msg (the workers' CPU time per message).
    """
    if Message.objects.filter(status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING]).exists():
        raise RuntimeError("the message store has waiting messages; measure on an idle database")
    prefix = f"B{uuid.uuid4().hex[:6]}"
    connector = _bench_connector()
    rows = build_backlog(total, prefix=prefix, missing_share=missing_share)
    started = time.perf_counter()
    load_backlog(rows, connector)
    load_seconds = time.perf_counter() - started
    if connection.vendor == "postgresql":
        # What autovacuum's analyze would do after a bulk load: the claim query is planned on today's row counts.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(Message._meta.db_table)}")
    first_id = Message.objects.filter(connector=connector, control_id=rows[0][1]).values_list(
        "id", flat=True
    )[0]
    connection.close()  # the workers must not wait on this process's idle transaction or connection

    manage = Path(settings.BASE_DIR) / "manage.py"
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, str(manage), "run_worker", "--once", "--batch", str(batch)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            proc.wait(timeout=max(timeout - (time.perf_counter() - started), 1))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    wall = time.perf_counter() - started
    # The workers' own CPU (start-up included): unlike the rates, it hardly depends on what else the machine runs.
    worker_cpu = _children_cpu_seconds() - cpu_before

    mine = Message.objects.filter(connector=connector, id__gte=first_id)
    window = mine.aggregate(first=Min("claimed_at"), last=Max("processed_at"))
    seconds = (
        (window["last"] - window["first"]).total_seconds() if window["first"] and window["last"] else wall
    )
    done = mine.exclude(status__in=[MessageStatus.RECEIVED, MessageStatus.PROCESSING]).count()
    result = {
        "process_msgs_per_s": round(done / seconds, 1) if seconds > 0 else 0.0,
        "process_wall_msgs_per_s": round(done / wall, 1) if wall > 0 else 0.0,
        "process_seconds": round(seconds, 2),
        "process_total": total,
        "process_done": done,
        "process_workers": workers,
        "process_failed": mine.filter(status=MessageStatus.FAILED).count(),
        "process_events": CanonicalEvent.objects.filter(subject__startswith=f"{prefix}E").count(),
        "process_deliveries": Delivery.objects.filter(business_key__startswith=f"{prefix}E").count(),
        "load_msgs_per_s": round(total / load_seconds, 1) if load_seconds > 0 else 0.0,
        "process_worker_cpu_ms_per_msg": round(worker_cpu / done * 1000, 2) if done else 0.0,
    }
    if cleanup:
        remove_bench_data(prefix, connector)
    return result


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def remove_bench_data(prefix: str, connector: Connector) -> None:
    """Delete what one measurement created (its messages, events, runs, deliveries and exceptions)."""
    from workflows.models import WorkflowRun

    like = f"{prefix}E"
    with transaction.atomic():
        ExceptionItem.objects.filter(business_key__startswith=like).delete()
        WorkflowRun.objects.filter(business_key__startswith=like).delete()
        Delivery.objects.filter(business_key__startswith=like).delete()
        CanonicalEvent.objects.filter(subject__startswith=like).delete()
        MessageKey.objects.filter(key__startswith=f"{connector.pk}|EPIC^GENHOSP|{prefix}-").delete()
        Message.objects.filter(connector=connector, control_id__startswith=f"{prefix}-").delete()
