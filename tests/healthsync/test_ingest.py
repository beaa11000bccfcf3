"""Ingest's one-statement batch on PostgreSQL: duplicates (stored before and within the batch), new keys,
rejected and keyless items settled by one statement, on the listener's own autocommit connection and through
Django's, with the same outcomes; a race with another writer falls back to row by row."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from healthsync import ingest
from healthsync.choices import MessageStatus, SystemKind
from healthsync.models import Connector, Message, System
from healthsync.models.core import MessageKey

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement path is PostgreSQL's"),
    # The listener's connection is a second one: it sees committed rows only.
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(autouse=True)
def _no_kick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "kick_worker", lambda: None)


@pytest.fixture
def connector() -> Connector:
    system = System.objects.create(code="epic", name="Epic", kind=SystemKind.EHR)
    return Connector.objects.create(system=system, code="epic-in", name="Epic in")


@pytest.fixture
def raw_connection() -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection like the listener's writer opens."""
    conn = ingest.connect()
    yield conn
    conn.close()


def _item(connector: Connector, control_id: str, **kwargs: str) -> ingest.InboundItem:
    raw = f"MSH|^~\\&|EPIC|GENHOSP|HS|HS|20260101||ADT^A01|{control_id}|P|2.5.1\r".encode()
    return ingest.InboundItem(connector.pk, raw, "EPIC^GENHOSP", control_id, "ADT^A01", **kwargs)


Store = Callable[[list[ingest.InboundItem]], list[ingest.StoreOutcome]]


@pytest.fixture(params=["listener connection", "django connection"])
def store(request: pytest.FixtureRequest, raw_connection: psycopg.Connection[Any]) -> Store:
    if request.param == "listener connection":
        return lambda items: ingest.store_messages(items, raw_connection=raw_connection)
    return lambda items: ingest.store_messages(items)


def test_one_batch_settles_stored_repeated_new_rejected_and_keyless_items(
    connector: Connector, store: Store
) -> None:
    before = store([_item(connector, "OLD")])[0]

    outcomes = store(
        [
            _item(connector, "NEW"),
            _item(connector, "OLD"),
            _item(connector, "NEW"),
            _item(connector, "BAD", status=MessageStatus.REJECTED, error="200 Unsupported"),
            _item(connector, ""),
            _item(connector, "LAST"),
        ]
    )

    assert [o.status for o in outcomes] == [
        "received",
        "duplicate",
        "duplicate",
        "rejected",
        "received",
        "received",
    ]
    assert [o.duplicate_of for o in outcomes] == [
        None,
        before.message_id,
        outcomes[0].message_id,
        None,
        None,
        None,
    ]
    ids = [o.message_id for o in outcomes]
    assert ids == sorted(ids) and ids[0] > before.message_id  # ids follow arrival order
    rows = {m.pk: m for m in Message.objects.filter(pk__in=ids)}
    assert [rows[i].status for i in ids] == [o.status for o in outcomes]
    assert [rows[i].duplicate_of_id for i in ids] == [o.duplicate_of for o in outcomes]
    assert [rows[i].dedupe_key is not None for i in ids] == [True, False, False, False, False, True]
    first = rows[ids[0]]
    assert first.sha256 == hashlib.sha256(bytes(first.raw)).hexdigest()
    assert (first.sender, first.control_id, first.message_type, first.lane) == (
        "EPIC^GENHOSP",
        "NEW",
        "ADT^A01",
        "clinical",
    )
    assert (first.attempts, first.business_key, first.claimed_by, first.error) == (0, "", "", "")
    assert rows[ids[3]].error == "200 Unsupported"
    assert dict(MessageKey.objects.values_list("key", "message_id")) == {
        ingest.dedupe_key(connector.pk, "EPIC^GENHOSP", "OLD"): before.message_id,
        ingest.dedupe_key(connector.pk, "EPIC^GENHOSP", "NEW"): ids[0],
        ingest.dedupe_key(connector.pk, "EPIC^GENHOSP", "LAST"): ids[5],
    }


def test_a_batch_of_only_rejected_items_claims_no_key(connector: Connector, store: Store) -> None:
    outcomes = store([_item(connector, "R1", status=MessageStatus.REJECTED)] * 2)

    assert [o.status for o in outcomes] == ["rejected", "rejected"]
    assert not MessageKey.objects.exists()


def test_the_listener_connection_stores_nothing_when_the_statement_fails(
    connector: Connector, raw_connection: psycopg.Connection[Any]
) -> None:
    too_long = ingest.InboundItem(connector.pk, b"MSH|", "EPIC", "C1", "ADT^A01", sequence_key="k" * 300)

    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        ingest.store_messages([_item(connector, "C0"), too_long], raw_connection=raw_connection)

    assert not Message.objects.exists()
    assert not MessageKey.objects.exists()


def test_a_key_another_writer_commits_meanwhile_makes_a_duplicate_on_the_listener_connection(
    connector: Connector, raw_connection: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    inserted = threading.Event()
    release = threading.Event()

    def other_listener() -> None:
        # Another process's batch holds the key uncommitted while ours claims it, then commits.
        try:
            with transaction.atomic():
                ingest.store_messages([_item(connector, "RACE")])
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    caplog.set_level("INFO", logger="healthsync.ingest")
    rival = threading.Thread(target=other_listener)
    rival.start()
    assert inserted.wait(10)
    threading.Timer(0.3, release.set).start()
    outcomes = ingest.store_messages(
        [_item(connector, "RACE"), _item(connector, "OTHER")], raw_connection=raw_connection
    )
    rival.join()

    assert "dedupe race" in caplog.text  # the statement saw the key claimed and not yet visible
    assert [o.status for o in outcomes] == ["duplicate", "received"]
    first = Message.objects.get(control_id="RACE", status=MessageStatus.RECEIVED)
    assert outcomes[0].duplicate_of == first.pk
    assert Message.objects.filter(control_id="OTHER").count() == 1


def test_the_listener_connection_keeps_the_batch_statement_on_one_generic_plan(
    raw_connection: psycopg.Connection[Any],
) -> None:
    # Custom plans would plan the statement again for every batch, which costs more than running it.
    assert raw_connection.autocommit
    assert raw_connection.execute("SHOW plan_cache_mode").fetchone() == ("force_generic_plan",)


def test_the_listener_plan_looks_keys_up_by_index_even_when_planned_on_an_empty_table(
    connector: Connector, raw_connection: psycopg.Connection[Any]
) -> None:
    # A generic plan made while the key table is small would otherwise scan it whole for every batch,
    # for as long as the connection lives, however large the table grows (a new install, autovacuum off).
    items = [_item(connector, "P1"), _item(connector, "P2")]
    sql, _ = ingest._batch_sql()
    params = ingest._batch_params(items, [ingest._key_for(i) for i in items], timezone.now())

    plan = "\n".join(row[0] for row in raw_connection.execute("EXPLAIN " + sql, params).fetchall())

    assert "Seq Scan on healthsync_messagekey" not in plan and "Hash Join" not in plan, plan
    assert "healthsync_messagekey_pkey" in plan, plan


@pytest.mark.parametrize("listener_path", [True, False], ids=["listener connection", "orm"])
def test_stored_messages_carry_their_sequence_key_and_lane_so_no_worker_rewrites_them(
    connector: Connector, raw_connection: psycopg.Connection[Any], listener_path: bool
) -> None:
    from connectors.simulators import hl7_builder

    admission = hl7_builder.adt_a01(encounter_id="ENC-77", control_id="K1").encode()
    charges = hl7_builder.dft_p03(encounter_id="ENC-77", control_id="K2").encode()
    items = [
        ingest.InboundItem(connector.pk, admission, "EPIC^GENHOSP", "K1", "ADT^A01"),
        ingest.InboundItem(connector.pk, charges, "EPIC^GENHOSP", "K2", "DFT^P03"),
        ingest.InboundItem(connector.pk, b"not hl7", "EPIC^GENHOSP", "K3", ""),
        ingest.InboundItem(connector.pk, b"MSH|", "EPIC^GENHOSP", "K4", "ADT^A01", status="rejected"),
    ]

    ingest.store_messages(items, raw_connection=raw_connection if listener_path else None)

    stored = {m.control_id: (m.sequence_key, m.lane) for m in Message.objects.all()}
    assert stored == {
        "K1": ("ENC-77", "clinical"),
        "K2": ("ENC-77", "financial"),  # charges travel in the financial lane of a clinical feed
        "K3": ("", "clinical"),  # unreadable: nothing to order by; processing fails it with its reason
        "K4": (None, "clinical"),  # refused at the door: never processed
    }
