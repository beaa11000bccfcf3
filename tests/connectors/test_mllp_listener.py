"""The MLLP listener, end to end: a real socket, the `hl7` package's MLLP client, the real database."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import hl7
import pytest
from django.db import OperationalError, connection, transaction
from hl7.client import MLLPClient

from connectors.hl7v2 import ack as acks
from connectors.hl7v2.listener import MLLPListener, resolve_connector
from healthsync import ingest
from healthsync.choices import Direction, MessageStatus, Protocol, SystemKind
from healthsync.models import Connector, MappingSet, Message, System

pytestmark = pytest.mark.django_db(transaction=True)


def adt(control_id: str, *, trigger: str = "A01", sender: str = "EPIC", mrn: str = "MRN001") -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|{sender}|GENHOSP|HEALTHSYNC|HS|20250101120000||ADT^{trigger}^ADT_A01|{control_id}|P|2.5.1",
            "EVN|A01|20250101120000",
            f"PID|1||{mrn}^^^GENHOSP^MR||DOE^JANE^Q||19800101|F",
            "PV1|1|I|4W^401^1||||1234^SMITH^JOHN|||MED||||||||V0001",
        ]
    )


@pytest.fixture
def connector() -> Connector:
    system = System.objects.create(code="epic", name="Epic", kind=SystemKind.EHR)
    for code, message_type in [("adt-a01", "ADT^A01"), ("adt-a03", "ADT^A03"), ("dft-p03", "DFT^P03")]:
        MappingSet.objects.create(
            code=code, name=code, protocol=Protocol.HL7V2, message_type=message_type, event_type="x.y"
        )
    return Connector.objects.create(
        system=system,
        code="epic-adt-in",
        name="Epic ADT in",
        direction=Direction.INBOUND,
        protocol=Protocol.HL7V2,
        config={"port": 0},
    )


@pytest.fixture
def listener(connector: Connector, monkeypatch: pytest.MonkeyPatch) -> Iterator[MLLPListener]:
    # The worker kick is the one outbound seam (tested on its own below): from its own thread it would
    # write the shared in-memory SQLite test database, whose table locks ignore the busy timeout.
    monkeypatch.setattr(ingest, "kick_worker", lambda: None)
    server = MLLPListener(connector, host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


def send(listener: MLLPListener, payload: str | bytes) -> hl7.Message:
    with MLLPClient("127.0.0.1", listener.port) as client:
        reply = client.send_message(payload)
    return ack_of(reply)


def ack_of(reply: bytes) -> hl7.Message:
    assert reply.startswith(acks.START_BLOCK) and reply.endswith(acks.END_BLOCK)
    return hl7.parse(reply[1:-2].decode())


def test_it_acknowledges_aa_after_storing_raw_bytes(listener: MLLPListener, connector: Connector) -> None:
    text = adt("CTRL0001")
    reply = send(listener, text)

    assert str(reply.segment("MSA")[1]) == "AA"
    assert str(reply.segment("MSA")[2]) == "CTRL0001"
    assert str(reply.segment("MSH")[9]) == "ACK^A01^ACK"
    assert str(reply.segment("MSH")[5]) == "EPIC"  # sender and receiver swapped
    assert str(reply.segment("MSH")[12]) == "2.5.1"
    stored = Message.objects.get()
    assert bytes(stored.raw) == text.encode()
    assert stored.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert stored.status == MessageStatus.RECEIVED
    assert stored.control_id == "CTRL0001"
    assert stored.message_type == "ADT^A01"
    assert stored.sender == "EPIC^GENHOSP"
    assert stored.connector == connector


def test_it_acknowledges_a_duplicate_control_id_but_stores_it_as_duplicate(listener: MLLPListener) -> None:
    first = send(listener, adt("DUP1"))
    second = send(listener, adt("DUP1"))

    assert str(first.segment("MSA")[1]) == "AA"
    assert str(second.segment("MSA")[1]) == "AA"
    assert str(second.segment("MSA")[2]) == "DUP1"
    original = Message.objects.get(status=MessageStatus.RECEIVED)
    copy = Message.objects.get(status=MessageStatus.DUPLICATE)
    assert copy.duplicate_of == original
    assert copy.dedupe_key is None


def test_the_same_control_id_from_another_sender_is_not_a_duplicate(listener: MLLPListener) -> None:
    send(listener, adt("SAME", sender="EPIC"))
    send(listener, adt("SAME", sender="CERNER"))

    assert Message.objects.filter(status=MessageStatus.RECEIVED).count() == 2


def test_it_rejects_garbage_with_ar_and_keeps_the_raw_bytes(listener: MLLPListener) -> None:
    garbage = b"\x00\xffthis is not hl7 at all"
    reply = send(listener, garbage)

    assert str(reply.segment("MSA")[1]) == "AR"
    assert str(reply.segment("MSA")[2]) == ""
    err = reply.segment("ERR")
    assert str(err[3][0][0]) in {"100", "102"}
    assert str(err[3][0][2]) == "HL70357"
    assert str(err[4]) == "E"
    kept = Message.objects.get()
    assert bytes(kept.raw) == garbage
    assert kept.status == MessageStatus.REJECTED
    assert kept.error


def test_it_rejects_a_message_without_msh(listener: MLLPListener) -> None:
    text = "PID|1||MRN001^^^GENHOSP^MR||DOE^JANE\rPV1|1|I"
    reply = send(listener, text)

    assert str(reply.segment("MSA")[1]) in {"AR", "AE"}
    assert str(reply.segment("ERR")[3][0][0]) == "100"
    kept = Message.objects.get()
    assert kept.status == MessageStatus.REJECTED
    assert bytes(kept.raw) == text.encode()
    assert "MSH" in kept.error


def test_it_rejects_an_unsupported_message_type(listener: MLLPListener) -> None:
    reply = send(listener, adt("ORU1").replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01"))

    assert str(reply.segment("MSA")[1]) == "AR"
    assert str(reply.segment("MSA")[2]) == "ORU1"
    assert str(reply.segment("ERR")[3][0][0]) == "200"
    kept = Message.objects.get()
    assert kept.status == MessageStatus.REJECTED
    assert kept.dedupe_key is None
    assert kept.message_type == "ORU^R01"


def test_it_rejects_an_unsupported_trigger_event_with_201(listener: MLLPListener) -> None:
    reply = send(listener, adt("A08X", trigger="A08"))

    assert str(reply.segment("MSA")[1]) == "AR"
    assert str(reply.segment("ERR")[3][0][0]) == "201"
    assert Message.objects.get().status == MessageStatus.REJECTED


def test_a_rejected_control_id_does_not_block_the_corrected_resend(listener: MLLPListener) -> None:
    send(listener, adt("FIX1", trigger="A08"))
    reply = send(listener, adt("FIX1"))

    assert str(reply.segment("MSA")[1]) == "AA"
    assert Message.objects.filter(status=MessageStatus.RECEIVED).count() == 1


def test_it_answers_pipelined_messages_in_order(listener: MLLPListener) -> None:
    ids = [f"PIPE{i:03d}" for i in range(30)]
    with socket.create_connection(("127.0.0.1", listener.port)) as sock:
        sock.sendall(b"".join(acks.mllp_frame(adt(i).encode()) for i in ids))
        decoder = acks.MLLPDecoder()
        frames: list[acks.Frame] = []
        while len(frames) < len(ids):
            data = sock.recv(65536)
            assert data
            frames += decoder.feed(data)
    assert [str(hl7.parse(f.payload.decode()).segment("MSA")[2]) for f in frames] == ids


def test_many_concurrent_senders_are_all_acknowledged_and_stored_once(listener: MLLPListener) -> None:
    senders, per_sender = 8, 50
    failures: list[str] = []

    def run(n: int) -> None:
        with MLLPClient("127.0.0.1", listener.port) as client:
            for i in range(per_sender):
                control_id = f"S{n}M{i}"
                reply = ack_of(client.send_message(adt(control_id)))
                if str(reply.segment("MSA")[1]) != "AA" or str(reply.segment("MSA")[2]) != control_id:
                    failures.append(control_id)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == []
    assert Message.objects.filter(status=MessageStatus.RECEIVED).count() == senders * per_sender
    assert Message.objects.values("control_id").distinct().count() == senders * per_sender


def test_it_answers_ae_when_the_database_cannot_commit_and_recovers(
    listener: MLLPListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest.store_messages

    def failing(items: list[ingest.InboundItem], **kwargs: object) -> list[ingest.StoreOutcome]:
        raise OperationalError("the database is down")

    monkeypatch.setattr(ingest, "store_messages", failing)
    reply = send(listener, adt("DOWN1"))

    assert str(reply.segment("MSA")[1]) == "AE"
    assert str(reply.segment("MSA")[2]) == "DOWN1"
    assert str(reply.segment("ERR")[3][0][0]) == "207"
    assert "resend" in str(reply.segment("ERR")[8])
    assert not Message.objects.exists()

    monkeypatch.setattr(ingest, "store_messages", real)
    again = send(listener, adt("DOWN1"))
    assert str(again.segment("MSA")[1]) == "AA"
    assert Message.objects.get().control_id == "DOWN1"


def test_it_rejects_bytes_outside_an_mllp_block_and_keeps_them(listener: MLLPListener) -> None:
    with socket.create_connection(("127.0.0.1", listener.port)) as sock:
        sock.sendall(b"HELLO?" + acks.mllp_frame(adt("AFTERJUNK").encode()))
        decoder = acks.MLLPDecoder()
        frames: list[acks.Frame] = []
        while len(frames) < 2:
            data = sock.recv(65536)
            assert data
            frames += decoder.feed(data)
    codes = [str(hl7.parse(f.payload.decode()).segment("MSA")[1]) for f in frames]
    assert codes == ["AR", "AA"]
    junk = Message.objects.get(status=MessageStatus.REJECTED)
    assert bytes(junk.raw) == b"HELLO?"


@pytest.mark.django_db  # no socket, no second connection: a rolled-back transaction is enough
def test_it_uses_the_connector_configured_for_the_port(connector: Connector) -> None:
    other = Connector.objects.create(
        system=connector.system,
        code="epic-2",
        name="Epic 2",
        direction=Direction.INBOUND,
        protocol=Protocol.HL7V2,
        config={"port": 2999},
    )
    assert resolve_connector(code=None, port=2999) == other
    assert resolve_connector(code="epic-adt-in", port=2999) == connector
    with pytest.raises(LookupError):
        resolve_connector(code="nope", port=2999)


@pytest.mark.django_db  # no socket, no second connection: a rolled-back transaction is enough
def test_it_creates_a_connector_when_none_exists() -> None:
    created = resolve_connector(code=None, port=2777)

    assert created.code == "mllp-2777"
    assert created.system.code == "hl7-inbound"
    assert resolve_connector(code=None, port=2777) == created


# Storage without the socket ---------------------------------------------------------------------------


def _item(connector: Connector, control_id: str, **kwargs: str) -> ingest.InboundItem:
    return ingest.InboundItem(
        connector_id=connector.pk,
        raw=adt(control_id).encode(),
        sender="EPIC^GENHOSP",
        control_id=control_id,
        message_type="ADT^A01",
        **kwargs,
    )


@pytest.mark.django_db  # no socket, no second connection: a rolled-back transaction is enough
def test_store_messages_dedupes_copies_within_one_batch(connector: Connector) -> None:
    outcomes = ingest.store_messages([_item(connector, "B1"), _item(connector, "B2"), _item(connector, "B1")])

    assert [o.status for o in outcomes] == ["received", "received", "duplicate"]
    assert outcomes[2].duplicate_of == outcomes[0].message_id
    assert Message.objects.get(pk=outcomes[0].message_id).dedupe_key is not None


@pytest.mark.django_db  # no socket, no second connection: a rolled-back transaction is enough
def test_store_messages_keeps_rejected_items_without_a_dedupe_key(connector: Connector) -> None:
    outcomes = ingest.store_messages(
        [_item(connector, "R1", status=MessageStatus.REJECTED, error="200 Unsupported")] * 2
    )

    assert [o.status for o in outcomes] == ["rejected", "rejected"]
    assert not Message.objects.filter(dedupe_key__isnull=False).exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs two concurrent writers: PostgreSQL")
def test_two_writers_racing_on_one_control_id_store_it_once(connector: Connector) -> None:
    inserted = threading.Event()
    release = threading.Event()

    def other_listener() -> None:
        # Another process's batch holds the key uncommitted while ours checks, then commits.
        try:
            with transaction.atomic():
                ingest.store_messages([_item(connector, "RACE")])
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    rival = threading.Thread(target=other_listener)
    rival.start()
    assert inserted.wait(10)
    threading.Timer(0.3, release.set).start()
    outcomes = ingest.store_messages([_item(connector, "RACE"), _item(connector, "OTHER")])
    rival.join()
    ingest.kick_worker.flush()  # its connection must be gone before the test database is flushed

    assert [o.status for o in outcomes] == ["duplicate", "received"]
    assert Message.objects.filter(control_id="RACE", status=MessageStatus.RECEIVED).count() == 1
    assert Message.objects.get(pk=outcomes[0].message_id).duplicate_of_id is not None


@pytest.mark.django_db
def test_store_messages_kicks_the_worker_once_per_batch_after_commit(
    connector: Connector,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Callable[..., AbstractContextManager[list[Callable[[], None]]]],
) -> None:
    kicks: list[int] = []
    monkeypatch.setattr(ingest, "kick_worker", lambda: kicks.append(1))

    with django_capture_on_commit_callbacks(execute=True):
        ingest.store_messages([_item(connector, "K1"), _item(connector, "K2")])
        ingest.store_messages([_item(connector, "K3", status=MessageStatus.REJECTED)])

    assert kicks == [1]  # a batch of rejected messages leaves the worker alone


@pytest.mark.django_db  # no socket, no second connection: a rolled-back transaction is enough
def test_the_kick_enqueues_process_pending() -> None:
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()  # only what this kick enqueues counts (rolled back with the test)
    ingest._Kicker(0)._enqueue()

    assert [q.func() for q in OrmQ.objects.all()] == [ingest.PROCESS_TASK]
