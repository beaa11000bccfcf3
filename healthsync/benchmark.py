"""Benchmarks users can run against their own database: `manage.py benchmark` prints JSON.

Every rate is printed beside the same machine's PostgreSQL batched-insert rate for rows of the same size,
measured in the same run, so a figure can be read against what the disk and the database allow here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import connection

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def sample_adt(control_id: str, *, encounter: str = "V0001", pad_to: int = 2048) -> bytes:
    """A realistic ADT^A01 of about `pad_to` bytes (a 2 KB ADT is the size the issue's figures use)."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|BENCH|GEN_HOSP|HEALTHSYNC|GEN_HOSP|{now}||ADT^A01^ADT_A01|{control_id}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        f"EVN|A01|{now}",
        "PID|1||MRN12345^^^GEN_HOSP^MR||DOE^JANE^Q||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701||555-0100",
        f"PV1|1|I|4W^401^A^GEN_HOSP||||1234^SMITH^JOHN^^^DR|||MED||||1|||1234^SMITH^JOHN|IN|{encounter}|MC|||||||||||||||||||||||||{now}",
        "IN1|1|MCR01|12345|MEDICARE|PO BOX 1^^CHICAGO^IL^60601||||||||||||||||||||||||||||||||||1EG4TE5MK72",
        "DG1|1||I10^Essential hypertension^I10|||F",
    ]
    body = "\r".join(segments)
    filler = max(0, pad_to - len(body) - 20)
    if filler:
        body += "\rNTE|1||" + ("x" * filler)
    return (body + "\r").encode()


@dataclass
class LoadResult:
    sent: int = 0
    accepted: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


async def _sender(host: str, port: int, prefix: str, stop_at: float, result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    try:
        while time.perf_counter() < stop_at:
            n += 1
            payload = sample_adt(f"{prefix}-{n}")
            started = time.perf_counter()
            writer.write(SB + payload + EB + CR)
            await writer.drain()
            ack = await reader.readuntil(EB + CR)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.sent += 1
            if b"MSA|AA|" in ack:
                result.accepted += 1
            else:
                result.errors += 1
    finally:
        writer.close()
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


def pg_batch_insert_rate(*, seconds: float = 3.0, batch: int = 100, row_bytes: int = 2048) -> float:
    """Rows/s inserting message-store-sized rows, `batch` rows per transaction, on the default database."""
    raw = os.urandom(row_bytes // 2).hex().encode()[:row_bytes]
    digest = hashlib.sha256(raw).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS bench_rows (id bigserial primary key, connector_id bigint,"
            " received_at timestamp with time zone, raw bytea, sha256 varchar(64), sender varchar(200),"
            " control_id varchar(200) unique, message_type varchar(40), status varchar(12))"
        )
    rows = 0
    started = time.perf_counter()
    run = uuid.uuid4().hex[:8]
    while time.perf_counter() - started < seconds:
        params = [
            (1, datetime.now(UTC), raw, digest, "BENCH^GEN", f"{run}-{rows + i}", "ADT^A01", "received")
            for i in range(batch)
        ]
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO bench_rows (connector_id, received_at, raw, sha256, sender, control_id,"
                " message_type, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                params,
            )
        rows += batch
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_rows")
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
