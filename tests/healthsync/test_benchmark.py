"""`manage.py benchmark`: a real listener subprocess, real sockets, the test database; numbers, never timings."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from connectors.hl7v2.reader import parse
from healthsync import benchmark
from healthsync.models import CanonicalEvent, Connector, Message, System

pytestmark = pytest.mark.django_db(transaction=True)

RATE_KEYS = [
    "ingest_msgs_per_s_16conn",
    "ingest_msgs_per_s_64conn",
    "ingest_msgs_per_s_1conn",
    "pg_batch_insert_rows_per_s",
    "pg_single_commit_per_s",
]


def test_benchmark_quick_prints_every_figure_as_a_number_and_cleans_up() -> None:
    # On a fresh database: the benchmark seeds the reference configuration it measures with.
    out = io.StringIO()

    call_command("benchmark", "--quick", stdout=out)

    result = json.loads(out.getvalue())
    for key in [*RATE_KEYS, "latency_p95_ms", "process_msgs_per_s"]:
        assert isinstance(result[key], int | float) and not isinstance(result[key], bool), (
            key,
            result["notes"],
        )
        assert result[key] >= 0, key
    for conns in (1, 16, 64):
        assert isinstance(result[f"ingest_{conns}conn_vs_pg_batch_insert"], float)
        assert result[f"ingest_{conns}conn_not_aa"] == 0
    assert isinstance(result["ingest_1conn_vs_pg_single_commit"], float)
    assert isinstance(result["process_vs_pg_batch_insert"], float)
    assert result["latency"]["events"] > 0
    # Everything the run stored is gone, and so is its connector.
    assert not Message.objects.exists()
    assert not CanonicalEvent.objects.exists()
    assert not Connector.objects.filter(code=benchmark.BENCH_CONNECTOR).exists()
    assert not System.objects.filter(code=benchmark.BENCH_SYSTEM).exists()


def test_skipped_measurements_are_null_with_a_reason() -> None:
    out = io.StringIO()

    call_command("benchmark", "--quick", "--skip-processing", "--skip-latency", stdout=out)

    result = json.loads(out.getvalue())
    assert result["process_msgs_per_s"] is None and result["latency_p95_ms"] is None
    assert any("--skip-processing" in note for note in result["notes"])
    assert any("--skip-latency" in note for note in result["notes"])
    assert isinstance(result["ingest_msgs_per_s_16conn"], float)


def test_batched_insert_rate_runs_on_the_test_database() -> None:
    rate = benchmark.pg_batch_insert_rate(seconds=0.2, batch=100)
    assert isinstance(rate, float) and rate > 0


def test_single_commit_rate_runs_on_the_test_database() -> None:
    rate = benchmark.pg_batch_insert_rate(seconds=0.2, batch=1)
    assert isinstance(rate, float) and rate > 0


def test_the_sample_adt_is_about_2_kb_and_maps_to_an_admission() -> None:
    raw = benchmark.sample_adt("CTRL-1", encounter="BENCHV1")
    message = parse(raw)
    assert 1900 <= len(raw) <= 2100
    assert message.header.control_id == "CTRL-1"
    assert message.get("PV1-19.1") == "BENCHV1"
    assert message.get("PV1-44.1")  # admit time: the reference A01 mapping requires it


def test_the_template_frames_the_same_message_as_sample_adt() -> None:
    frame = benchmark._Template().frame("CTRL-9", "BENCHV9")
    assert frame.startswith(benchmark.SB) and frame.endswith(benchmark.EB + benchmark.CR)
    parsed = parse(frame[1:-2])
    assert parsed.header.control_id == "CTRL-9"
    assert parsed.get("PV1-19.1") == "BENCHV9"


def test_the_database_url_points_at_the_database_in_use() -> None:
    from django.db import connection

    url = benchmark.database_url()
    assert connection.settings_dict["NAME"].rsplit("/", 1)[-1] in url


def test_it_refuses_a_non_positive_duration() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--seconds"):
        call_command("benchmark", "--seconds", "0")
