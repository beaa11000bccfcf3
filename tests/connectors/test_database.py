"""Database events: rows of a real reporting database (a second PostgreSQL database, and SQLite) polled by a
high-water mark into the message store, each row once."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.database.poller import poll_all, poll_connector, stored_mark, validate_source_config
from connectors.database.source import validate_dsn
from healthsync.choices import Direction, MessageStatus, Protocol
from healthsync.errors import ConnectorError
from healthsync.models import Connector, Message, System
from healthsync.registry import connector_registry

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = {
    "table": "adt_events",
    "columns": ["mrn", "event"],
    "mark_column": "updated_at",
    "tiebreak_column": "id",
    "batch_size": 2,
    "message_type": "adt_event",
}


def _admin_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgresql://postgres@127.0.0.1:5432/postgres"
    return url.rsplit("/", 1)[0] + "/postgres"


@pytest.fixture
def reporting_pg() -> Iterator[str]:
    """A second, real PostgreSQL database standing in for a vendor's reporting database."""
    admin = _admin_url()
    name = f"h4_reporting_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL server to create a reporting database on")
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE adt_events (id serial PRIMARY KEY, mrn text NOT NULL, event text NOT NULL,"
            " updated_at timestamptz NOT NULL)"
        )
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def reporting_sqlite(tmp_path: Path) -> str:
    path = tmp_path / "reporting.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE adt_events (id INTEGER PRIMARY KEY, mrn TEXT NOT NULL, event TEXT NOT NULL,"
            " updated_at TEXT NOT NULL)"
        )
    return f"sqlite:///{path}"


def _insert(dsn: str, rows: list[tuple[str, str, str]]) -> None:
    if dsn.startswith("sqlite"):
        with sqlite3.connect(dsn[len("sqlite:///") :]) as conn:
            conn.executemany("INSERT INTO adt_events (mrn, event, updated_at) VALUES (?, ?, ?)", rows)
        return
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO adt_events (mrn, event, updated_at) VALUES (%s, %s, %s)", rows)


def _execute(dsn: str, sql: str) -> None:
    if dsn.startswith("sqlite"):
        with sqlite3.connect(dsn[len("sqlite:///") :]) as conn:
            conn.execute(sql)
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def _connector(dsn: str, **overrides: Any) -> Connector:
    system = System.objects.create(code=f"rpt-{uuid.uuid4().hex[:6]}", name="Reporting DB", kind="ehr")
    connector = Connector(
        system=system,
        code=f"db-{uuid.uuid4().hex[:6]}",
        name="ADT events",
        direction=Direction.INBOUND,
        protocol=Protocol.DATABASE,
        config={**CONFIG, **overrides},
    )
    connector.secrets = {"dsn": dsn}
    connector.full_clean()
    connector.save()
    return connector


def _events(connector: Connector) -> list[str]:
    import json

    rows = Message.objects.filter(connector=connector, status=MessageStatus.RECEIVED).order_by("id")
    return [json.loads(bytes(m.raw))["event"] for m in rows]


@pytest.fixture(params=["postgresql", "sqlite"])
def reporting(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("reporting_pg" if request.param == "postgresql" else "reporting_sqlite")


def test_it_stores_each_new_row_once_in_mark_order(reporting: str) -> None:
    _insert(
        reporting,
        [
            ("M1", "A01", "2026-01-01T08:00:00+00:00"),
            ("M2", "A01", "2026-01-01T08:00:00+00:00"),  # same mark: the id breaks the tie
            ("M1", "A03", "2026-01-01T09:00:00+00:00"),
        ],
    )
    connector = _connector(reporting)
    report = poll_connector(connector)
    assert len(report.stored) == 3  # two batches of 2 and 1
    assert _events(connector) == ["A01", "A01", "A03"]
    message = Message.objects.get(pk=report.stored[0])
    assert message.message_type == "adt_event"
    assert connector_registry.get(Protocol.DATABASE).parse(bytes(message.raw)).get("mrn") == "M1"

    assert poll_connector(connector).stored == []  # nothing new: the mark holds
    _insert(
        reporting, [("M3", "A08", "2026-01-01T09:00:00+00:00"), ("M3", "A04", "2026-01-02T00:00:00+00:00")]
    )
    again = poll_connector(connector)
    # A later row sharing the last mark value is after the mark by its id (the tie-breaker).
    assert len(again.stored) == 2
    assert _events(connector)[3:] == ["A08", "A04"]


def test_a_row_read_twice_is_a_duplicate_not_a_second_message(reporting: str) -> None:
    _insert(reporting, [("M1", "A01", "2026-01-01T08:00:00+00:00")])
    connector = _connector(reporting)
    poll_connector(connector)
    # Two polls that overlap (or one that re-reads after a crash) store the same row version again.
    from connectors.database import poller

    report = poller.PollReport(mark=None)
    from connectors.database.source import open_source

    with open_source(reporting) as source:
        poller._poll_batch(connector, source, connector.config, report)
    assert report.stored == [] and report.duplicates == 1
    assert Message.objects.filter(connector=connector).count() == 2
    assert Message.objects.filter(connector=connector, status=MessageStatus.RECEIVED).count() == 1


def test_the_mark_does_not_advance_when_the_store_fails(
    reporting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _insert(reporting, [("M1", "A01", "2026-01-01T08:00:00+00:00")])
    connector = _connector(reporting)
    from connectors.database import poller

    def broken(items: Any) -> Any:
        raise RuntimeError("database went away during commit")

    monkeypatch.setattr(poller, "store_messages", broken)
    with pytest.raises(RuntimeError):
        poll_connector(connector)
    assert stored_mark(connector) is None
    monkeypatch.undo()
    assert len(poll_connector(connector).stored) == 1
    assert stored_mark(connector) is not None


def test_an_integer_mark_and_a_query_source(reporting: str) -> None:
    _insert(
        reporting, [("M1", "A01", "2026-01-01"), ("M2", "A02", "2026-01-02"), ("M3", "A03", "2026-01-03")]
    )
    connector = _connector(
        reporting,
        table=None,
        query="SELECT id, mrn, event FROM adt_events WHERE event LIKE 'A0%'",
        columns=None,
        mark_column="id",
        tiebreak_column=None,
    )
    connector.config = {k: v for k, v in connector.config.items() if v is not None}
    connector.save()
    assert len(poll_connector(connector).stored) == 3
    assert stored_mark(connector) == [3]
    assert poll_all(codes=[connector.code]) == 0


def test_a_missing_table_is_a_permanent_error_and_other_connectors_still_poll(reporting: str) -> None:
    _insert(reporting, [("M1", "A01", "2026-01-01T08:00:00+00:00")])
    broken = _connector(reporting, table="no_such_table")
    good = _connector(reporting)
    with pytest.raises(ConnectorError) as caught:
        poll_connector(broken)
    assert caught.value.permanent
    assert poll_all(codes=[broken.code, good.code]) == 1


def test_an_unreachable_database_is_transient() -> None:
    system = System.objects.create(code="rpt-down", name="Down", kind="ehr")
    connector = Connector.objects.create(
        system=system,
        code="db-down",
        name="Down",
        direction=Direction.INBOUND,
        protocol=Protocol.DATABASE,
        config=CONFIG,
        timeout_seconds=2,
    )
    connector.secrets = {"dsn": "postgresql://nobody@127.0.0.1:1/none"}
    connector.save()
    with pytest.raises(ConnectorError) as caught:
        poll_connector(connector)
    assert not caught.value.permanent
    assert "nobody" not in caught.value.message


def test_test_connection_reads_without_storing(reporting: str) -> None:
    _insert(reporting, [("M1", "A01", "2026-01-01T08:00:00+00:00")])
    connector = _connector(reporting)
    ok, detail = connector_registry.get(Protocol.DATABASE).test_connection(connector)  # type: ignore[attr-defined]
    assert ok, detail
    assert not Message.objects.filter(connector=connector).exists()


def test_polling_never_writes_to_the_reporting_database(reporting: str) -> None:
    from connectors.database.source import open_source

    with open_source(reporting) as source, pytest.raises(ConnectorError):
        source.fetch("DELETE FROM adt_events", [])


def test_config_errors_are_specific() -> None:
    errors = validate_source_config({"table": "x; drop table y", "mark_column": "", "batch_size": 0})
    assert any("table must be a plain SQL name" in e for e in errors)
    assert any("mark_column" in e for e in errors)
    assert any("batch_size" in e for e in errors)
    assert validate_source_config({"table": "a", "query": "SELECT 1", "mark_column": "id"})[0].startswith(
        "give either table"
    )
    assert validate_dsn("mysql://x") == ["dsn must start with postgresql:// or sqlite:///"]
    assert connector_registry.get(Protocol.DATABASE).validate_config(Direction.OUTBOUND, CONFIG)
