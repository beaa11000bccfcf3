"""Benchmarks users can run against their own database: `manage.py benchmark` prints JSON.

Every rate is printed beside the same machine's batched-insert rate for rows of the same size (100 rows per
transaction), measured in the same run, so a figure can be read against what the disk and the database allow.
The listener runs as its own process (`manage.py mllp_listener`) on a dedicated bench connector, exactly as
it runs in production, and is driven over real sockets; everything the run stored is removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import connection, models, transaction

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
BENCH_CONNECTOR = "bench-mllp"
BENCH_SYSTEM = "bench-ehr"
BENCH_TYPES = ["ADT^A01"]
# Encounters the benchmark makes up start with this, so its workflow runs can be found and removed.
BENCH_ENCOUNTER_PREFIX = "BENCHV"


def sample_adt(control_id: str, *, encounter: str = "V0001", pad_to: int = 2048) -> bytes:
    """A realistic ADT^A01 of about `pad_to` bytes (a 2 KB ADT is the size the issue's figures use)."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|BENCH|GEN_HOSP|HEALTHSYNC|GEN_HOSP|{now}||ADT^A01^ADT_A01|{control_id}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        f"EVN|A01|{now}",
        "PID|1||MRN12345^^^GEN_HOSP^MR||DOE^JANE^Q||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701||555-0100",
        # PV1-19 visit number, PV1-20 financial class, PV1-44 admit time (the reference A01 mapping needs it).
        "PV1|1|I|4W^401^A^GEN_HOSP||||1234^SMITH^JOHN^^^DR|||MED||||1|||1234^SMITH^JOHN|IN|"
        + f"{encounter}|MC"
        + "|" * 24
        + now,
        "IN1|1|MCR01|12345|MEDICARE|PO BOX 1^^CHICAGO^IL^60601||||||||||||||||||||||||||||||||||1EG4TE5MK72",
        "DG1|1||I10^Essential hypertension^I10|||F",
    ]
    body = "\r".join(segments)
    filler = max(0, pad_to - len(body) - 20)
    if filler:
        body += "\rNTE|1||" + ("x" * filler)
    return (body + "\r").encode()


class _Template:
    """sample_adt with the control id and encounter as placeholders: the load generator shares the two cores
    with the listener, so it must cost next to nothing per message."""

    def __init__(self) -> None:
        raw = sample_adt("@@CID@@", encounter="@@ENC@@")
        head, _, tail = raw.partition(b"@@CID@@")
        middle, _, rest = tail.partition(b"@@ENC@@")
        self.parts = (SB + head, middle, rest + EB + CR)

    def frame(self, control_id: str, encounter: str = "V0001") -> bytes:
        a, b, c = self.parts
        return b"".join((a, control_id.encode(), b, encounter.encode(), c))


@dataclass
class LoadResult:
    """What a load run saw: messages sent, AA received, anything else, and each ACK's wait."""

    sent: int = 0
    accepted: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    control_ids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


async def _sender(
    host: str,
    port: int,
    prefix: str,
    stop_at: float,
    result: LoadResult,
    *,
    interval: float = 0.0,
    encounter_prefix: str = "V",
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    template = _Template()
    n = 0
    next_at = time.perf_counter()
    try:
        while time.perf_counter() < stop_at:
            if interval:
                # A fixed schedule: a slow ACK makes the next sends catch up, as real offered load would.
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            n += 1
            control_id = f"{prefix}-{n}"
            frame = template.frame(control_id, f"{encounter_prefix}{prefix}-{n}")
            started = time.perf_counter()
            writer.write(frame)
            await writer.drain()
            ack = await reader.readuntil(EB + CR)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.sent += 1
            if b"MSA|AA|" in ack or b"MSA|CA|" in ack:
                result.accepted += 1
                result.control_ids.append(control_id)
            else:
                result.errors += 1
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def mllp_load(host: str, port: int, *, connections: int, seconds: float) -> LoadResult:
    """Send 2 KB ADTs from `connections` concurrent senders for `seconds`; each waits for its ACK."""
    result = LoadResult()
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(_sender(host, port, f"{run}-{i}", stop_at, result) for i in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


async def paced_load(
    host: str, port: int, *, rate: float, seconds: float, connections: int = 8
) -> LoadResult:
    """Offer `rate` messages/s in total over `connections` senders for `seconds` (ACK awaited each time)."""
    result = LoadResult()
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    stop_at = started + seconds
    interval = connections / rate
    await asyncio.gather(
        *(
            _sender(
                host,
                port,
                f"{run}-{i}",
                stop_at,
                result,
                interval=interval,
                encounter_prefix=BENCH_ENCOUNTER_PREFIX,
            )
            for i in range(connections)
        )
    )
    result.seconds = time.perf_counter() - started
    return result


def run_async(coro: Any) -> Any:
    """Run the load generator on uvloop when installed: its cost is taken from the listener's two cores."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def pg_batch_insert_rate(*, seconds: float = 3.0, batch: int = 100, row_bytes: int = 2048) -> float:
    """Rows/s inserting message-store-sized rows, `batch` rows per transaction, on the default database.

    Works on SQLite too (the figure is then SQLite's, which the benchmark says in its notes). With `batch=1`
    it is the rate of commits one connection gets, one after the other: the ceiling of a sender that waits for
    each ACK, which `ingest_msgs_per_s_1conn` is read against.
    """
    raw = os.urandom(row_bytes // 2).hex().encode()[:row_bytes]
    digest = hashlib.sha256(raw).hexdigest()
    table = f"bench_rows_{uuid.uuid4().hex[:8]}"
    if connection.vendor == "postgresql":
        ddl = (
            f"CREATE TABLE {table} (id bigserial primary key, connector_id bigint,"
            " received_at timestamp with time zone, raw bytea, sha256 varchar(64), sender varchar(200),"
            " control_id varchar(200) unique, message_type varchar(40), status varchar(12))"
        )
    else:
        ddl = (
            f"CREATE TABLE {table} (id integer primary key autoincrement, connector_id bigint,"
            " received_at datetime, raw blob, sha256 varchar(64), sender varchar(200),"
            " control_id varchar(200) unique, message_type varchar(40), status varchar(12))"
        )
    insert = (
        f"INSERT INTO {table} (connector_id, received_at, raw, sha256, sender, control_id,"  # noqa: S608
        " message_type, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(ddl)
    rows = 0
    run = uuid.uuid4().hex[:8]
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            now = datetime.now(UTC) if settings.USE_TZ else datetime.now()
            params = [
                (1, now, raw, digest, "BENCH^GEN", f"{run}-{rows + i}", "ADT^A01", "received")
                for i in range(batch)
            ]
            if batch == 1:
                # Autocommit: the insert is its own transaction in one round trip, like the listener's batch.
                with connection.cursor() as cursor:
                    cursor.execute(insert, params[0])
            else:
                # One transaction per batch: its commit (one WAL flush) is what the batch shares.
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.executemany(insert, params)
            rows += batch
        elapsed = time.perf_counter() - started
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
    return rows / elapsed


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2) if values else 0.0,
        "p95": round(percentile(values, 95), 2),
    }


# The whole run ------------------------------------------------------------------------------------------


def database_url() -> str:
    """A DATABASE_URL for the database this process uses right now (the test database under pytest)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    user = quote(s.get("USER") or "")
    password = quote(s.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = s.get("HOST") or "localhost"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{quote(s['NAME'])}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the listener exited with status {process.returncode} before it was ready")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def manage_py() -> str:
    return str(Path(settings.BASE_DIR) / "manage.py")


@contextlib.contextmanager
def listener_process(
    connector_code: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra: list[str] | None = None,
    url: str | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`manage.py mllp_listener` as a subprocess on the database this process uses (or `url`); stopped on exit."""
    port = port or free_port(host)
    env = {**os.environ, "DATABASE_URL": url or database_url()}
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    cmd = [sys.executable, manage_py(), "mllp_listener", "--host", host, "--port", str(port)]
    cmd += ["--connector", connector_code, *(extra or [])]
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(host, port, timeout=60, process=process)
        except RuntimeError as exc:
            log.seek(0)
            tail = log.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{exc}\n{tail}") from None
        yield process, port
    finally:
        stop_process(process)
        log.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def worker_process() -> Iterator[subprocess.Popen[bytes]]:
    """A worker draining received messages continuously (`manage.py benchmark --worker-loop`)."""
    env = {**os.environ, "DATABASE_URL": database_url()}
    cmd = [sys.executable, manage_py(), "benchmark", "--worker-loop"]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        _wait_until_ready(process)
        yield process
    finally:
        stop_process(process)


def _wait_until_ready(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait for the worker's "ready" line: a deployed worker is already running when messages arrive, so its
    start-up (Django, the first configuration load) must not be counted as the first messages' latency."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(timeout) and process.stdout.readline().strip() == b"ready":
            return
    raise RuntimeError("a benchmark worker did not start within a minute")


def worker_loop(stop: Any = None) -> None:
    """Process received messages as soon as they are committed, until SIGTERM; says "ready" once warm."""
    from healthsync import pipeline

    running = [True]

    def _stop(*_: Any) -> None:
        running[0] = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pipeline.process_pending()  # loads the configuration and opens the connection
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nobody reads the pipe from now on: never block on it
    while running[0]:
        if pipeline.process_pending() == 0:
            time.sleep(0.01)


def ensure_bench_connector() -> Any:
    """The dedicated inbound connector the benchmark stores under, so its rows are easy to find and remove."""
    from healthsync.choices import Direction, Lane, Protocol, SystemKind
    from healthsync.models import Connector, System

    system, _ = System.objects.get_or_create(
        code=BENCH_SYSTEM, defaults={"name": "Benchmark EHR (manage.py benchmark)", "kind": SystemKind.EHR}
    )
    connector, _ = Connector.objects.get_or_create(
        code=BENCH_CONNECTOR,
        defaults={
            "system": system,
            "name": "Benchmark MLLP in (manage.py benchmark)",
            "direction": Direction.INBOUND,
            "protocol": Protocol.HL7V2,
            "lane": Lane.CLINICAL,
            "config": {"accepted_types": BENCH_TYPES},
        },
    )
    return connector


def delete_bench_messages(connector_id: int) -> int:
    """Remove everything a run stored under the bench connector: messages, their events, runs, exceptions."""
    from healthsync.models import CanonicalEvent, Delivery, ExceptionItem, Message

    messages = Message.objects.filter(connector_id=connector_id)
    events = CanonicalEvent.objects.filter(message__connector_id=connector_id)
    with transaction.atomic():
        with contextlib.suppress(ImportError):
            from workflows.models import WorkflowRun

            WorkflowRun.objects.filter(business_key__startswith=BENCH_ENCOUNTER_PREFIX).delete()
        Delivery.objects.filter(event__in=events).delete()
        Delivery.objects.filter(business_key__startswith=BENCH_ENCOUNTER_PREFIX).delete()
        ExceptionItem.objects.filter(message__in=messages).delete()
        events.delete()
        count = messages.count()
        _delete_messages(messages)
    return count


def _delete_messages(messages: Any) -> None:
    """Delete the messages in a few set-wise statements, not through Django's collector.

    The collector reads every row and the rows pointing at it before deleting, a batch at a time: about eight
    minutes for the ~65,000 messages of one benchmark run. What points at a message is handled first, each
    relation in one statement (cascade: delete; set null: update), then the messages in one DELETE.
    """
    from healthsync.models import Message

    ids = messages.values("pk")
    for relation in Message._meta.related_objects:
        field = relation.field
        related = relation.related_model._default_manager.filter(**{f"{field.name}__in": ids})
        if relation.on_delete is models.CASCADE:
            related.delete()
        elif relation.on_delete is models.SET_NULL:
            related.update(**{field.name: None})
    messages._raw_delete(messages.db)


def remove_bench_connector() -> None:
    from healthsync.models import Connector, System

    connector = Connector.objects.filter(code=BENCH_CONNECTOR).first()
    if connector is not None:
        delete_bench_messages(connector.pk)
        connector.delete()
    System.objects.filter(code=BENCH_SYSTEM, connectors__isnull=True).delete()


def _has_active_mapping(message_type: str) -> bool:
    from healthsync.choices import Protocol, VersionStatus
    from healthsync.models import MappingSet

    return MappingSet.objects.filter(
        protocol=Protocol.HL7V2, message_type=message_type, active_version__status=VersionStatus.ACTIVE
    ).exists()


def measure_latency(
    host: str,
    port: int,
    connector_id: int,
    *,
    rate: float,
    seconds: float,
    settle: float = 30.0,
    workers: int = 2,
) -> tuple[float | None, dict[str, Any]]:
    """p95 of CanonicalEvent.recorded_at - Message.received_at at `rate` msgs/s offered, `workers` running.

    Every acknowledged message counts: one that has no event when the settle time runs out counts with the
    time it had waited by then (a lower bound), so a worker that falls behind shows as a high p95 rather than
    as fewer samples.
    """
    from django.utils import timezone

    from healthsync.models import CanonicalEvent, Message

    with contextlib.ExitStack() as stack:
        for _ in range(max(1, workers)):
            stack.enter_context(worker_process())
        # Each sender waits for its ACK, so enough of them that ACK latency cannot cap the offered rate.
        connections = max(4, min(64, int(rate / 15)))
        load = run_async(paced_load(host, port, rate=rate, seconds=seconds, connections=connections))
        deadline = time.monotonic() + settle
        pending = Message.objects.filter(connector_id=connector_id, status__in=["received", "processing"])
        while time.monotonic() < deadline and pending.exists():
            time.sleep(0.2)
        cutoff = timezone.now()
    received = dict(
        Message.objects.filter(connector_id=connector_id).values_list("control_id", "received_at")
    )
    first_event: dict[str, Any] = {}
    for control_id, recorded in CanonicalEvent.objects.filter(message__connector_id=connector_id).values_list(
        "message__control_id", "recorded_at"
    ):
        if control_id not in first_event or recorded < first_event[control_id]:
            first_event[control_id] = recorded
    values: list[float] = []
    waiting = 0
    for control_id in load.control_ids:
        arrived = received.get(control_id)
        if arrived is None:
            continue
        recorded = first_event.get(control_id)
        if recorded is None:
            waiting += 1
            recorded = cutoff
        values.append((recorded - arrived).total_seconds() * 1000)
    detail = {
        "offered_msgs_per_s": rate,
        "achieved_msgs_per_s": round(load.rate, 1),
        "acknowledged": load.accepted,
        "workers": max(1, workers),
        "events": len(values) - waiting,
        "without_event_at_cutoff": waiting,
        "ack_ms": summary(load.latencies_ms),
        "receive_to_event_ms": summary(values),
    }
    return (round(percentile(values, 95), 1) if values else None), detail


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(v, 2) for v in os.getloadavg()]
    return []


def _ratio(value: float | None, base: float) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def run_benchmark(
    *,
    seconds: float = 10.0,
    quick: bool = False,
    skip_processing: bool = False,
    skip_latency: bool = False,
    process_total: int = 50_000,
    latency_rate: float = 500.0,
    latency_workers: int = 2,
    listener_args: list[str] | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Run every measurement and return the JSON-ready result (see the module docstring)."""

    def say(text: str) -> None:
        if log is not None:
            log(text)

    if quick:
        seconds, process_total, latency_rate = (
            min(seconds, 1.0),
            min(process_total, 200),
            min(latency_rate, 50),
        )
    notes: list[str] = []
    result: dict[str, Any] = {
        "database": connection.vendor,
        "seconds_per_run": seconds,
        "quick": quick,
        "load_average_start": load_average(),
    }
    if connection.vendor != "postgresql":
        notes.append(
            f"database is {connection.vendor}, not PostgreSQL: pg_batch_insert_rows_per_s is this database's "
            "batched-insert rate and the figures are not comparable with the PostgreSQL targets"
        )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW autovacuum")
            if cursor.fetchone()[0] != "on":
                notes.append(
                    "autovacuum is off on this server: dead rows pile up in the message store during the drain "
                    "and claims slow down as it goes; production servers keep it on"
                )
    queued_before = _last_queued_task()
    say("batched inserts (100 rows per transaction)")
    pg_rate = pg_batch_insert_rate(seconds=min(3.0, seconds))
    result["pg_batch_insert_rows_per_s"] = round(pg_rate, 1)

    connector = ensure_bench_connector()
    delete_bench_messages(connector.pk)
    host = "127.0.0.1"
    try:
        with listener_process(connector.code, host=host, extra=listener_args) as (process, port):
            run_async(mllp_load(host, port, connections=4, seconds=min(1.0, seconds)))  # warm-up
            for conns in (1, 16, 64):
                if conns == 1:
                    # Measured just before, as the disk's flush time moves with whatever else the machine does.
                    say("single-row commits on one connection")
                    single = pg_batch_insert_rate(seconds=min(3.0, seconds), batch=1)
                    result["pg_single_commit_per_s"] = round(single, 1)
                say(f"ingest with {conns} connection(s) for {seconds:g} s")
                cpu_before = cpu_seconds(process.pid)
                load = run_async(mllp_load(host, port, connections=conns, seconds=seconds))
                cpu_after = cpu_seconds(process.pid)
                if cpu_before is not None and cpu_after is not None and load.sent:
                    # CPU per message does not depend on what else the machine runs: compare builds with it.
                    result[f"listener_cpu_us_per_msg_{conns}conn"] = round(
                        (cpu_after - cpu_before) / load.sent * 1e6, 1
                    )
                rate = round(load.rate, 1)
                result[f"ingest_msgs_per_s_{conns}conn"] = rate
                result[f"ingest_{conns}conn_vs_pg_batch_insert"] = _ratio(rate, pg_rate)
                if conns == 1:
                    result["ingest_1conn_vs_pg_single_commit"] = _ratio(
                        rate, result["pg_single_commit_per_s"]
                    )
                result[f"ingest_{conns}conn_ack_ms"] = summary(load.latencies_ms)
                result[f"ingest_{conns}conn_not_aa"] = load.errors
                result[f"load_average_after_{conns}conn"] = load_average()
            stored = delete_bench_messages(connector.pk)
            result["ingest_messages_stored"] = stored
            if not skip_latency and not _has_active_mapping(BENCH_TYPES[0]):
                # A fresh database: the reference configuration the processing measurement seeds as well.
                from healthsync.seed import seed_reference_config

                seed_reference_config()
            if skip_latency:
                result["latency_p95_ms"] = None
                notes.append("latency skipped (--skip-latency)")
            elif not _has_active_mapping(BENCH_TYPES[0]):
                notes.append(
                    f"no active mapping for {BENCH_TYPES[0]}: latency_p95_ms is null (run manage.py load_demo "
                    "or activate a mapping first)"
                )
                result["latency_p95_ms"] = None
            else:
                say(f"latency at {latency_rate:g} msgs/s offered, {latency_workers} worker(s) running")
                p95, detail = measure_latency(
                    host,
                    port,
                    connector.pk,
                    rate=latency_rate,
                    seconds=max(seconds, 2.0 if quick else 5.0),
                    workers=latency_workers,
                )
                result["latency_p95_ms"] = p95
                result["latency"] = detail
                if p95 is None:
                    notes.append("latency: no canonical event was recorded for the bench messages")
        delete_bench_messages(connector.pk)
        if skip_processing:
            result["process_msgs_per_s"] = None
            notes.append("processing skipped (--skip-processing)")
        else:
            say(f"processing a backlog of {process_total} messages with two workers")
            result["process_msgs_per_s"] = _processing_rate(process_total, notes, result)
        result["process_vs_pg_batch_insert"] = _ratio(result["process_msgs_per_s"], pg_rate)
    finally:
        remove_bench_connector()
        _drop_kick_tasks(after=queued_before)
    result["load_average_end"] = load_average()
    result["notes"] = notes
    return result


def _last_queued_task() -> int:
    from django_q.models import OrmQ

    return OrmQ.objects.aggregate(last=models.Max("id"))["last"] or 0


def _drop_kick_tasks(*, after: int) -> None:
    """The listener kicks the worker after each commit; with no worker running in the benchmark, those
    process_pending tasks would wait in the queue (thousands) for the next worker. Drop the ones this run left."""
    from django_q.models import OrmQ
    from django_q.signing import BadSignature, SignedPackage

    from healthsync.ingest import PROCESS_TASK

    mine = []
    for pk, payload in OrmQ.objects.filter(id__gt=after).values_list("id", "payload").iterator():
        with contextlib.suppress(BadSignature):
            if SignedPackage.loads(payload).get("func") == PROCESS_TASK:
                mine.append(pk)
    OrmQ.objects.filter(id__in=mine).delete()


def _processing_rate(total: int, notes: list[str], result: dict[str, Any]) -> float | None:
    """healthsync.bench_processing.measure_processing (two workers draining a backlog), when available."""
    try:
        from healthsync.bench_processing import measure_processing
    except ImportError:
        notes.append("process_msgs_per_s is null: healthsync.bench_processing is not available in this build")
        return None
    # Its worker processes read DATABASE_URL: point them at the database this run uses.
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = database_url()
    try:
        outcome = measure_processing(total=total, workers=2)
    except RuntimeError as exc:
        notes.append(f"process_msgs_per_s is null: {exc}")
        return None
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous
    if isinstance(outcome, dict):
        for key, value in outcome.items():
            if key != "process_msgs_per_s" and isinstance(value, int | float):
                result[key] = value
        rate = outcome.get("process_msgs_per_s")
    else:
        rate = outcome
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        return round(float(rate), 1)
    notes.append("process_msgs_per_s is null: measure_processing returned no rate")
    return None


def dashboard_benchmark(*, requests: int = 10) -> dict[str, Any]:
    """Page timings of the dashboards (`benchmark --dashboards`); lives in dashboards/bench.py."""
    from dashboards.bench import run_dashboard_benchmark  # the core reaches into the app only when asked

    return run_dashboard_benchmark(requests=requests)
