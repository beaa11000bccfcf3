"""Issue 4's HL7 v2 listener items on real sockets: TLS, batches, versions 2.3 to 2.8, Z-segments, segment
endings, enhanced (commit) acknowledgements."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import OperationalError

from connectors.hl7v2 import ack as acks
from connectors.hl7v2.listener import MLLPListener
from connectors.hl7v2.reader import parse
from healthsync import ingest
from healthsync.choices import MessageStatus
from healthsync.models import Connector, Message
from tests.connectors.test_mllp_listener import adt, connector, listener  # noqa: F401 (fixtures)
from tests.connectors.tls import self_signed

pytestmark = pytest.mark.django_db(transaction=True)


def exchange(port: int, payload: bytes, *, wrap: ssl.SSLContext | None = None) -> bytes:
    """Send one MLLP block and return the payload of the one block that answers it."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        sock = wrap.wrap_socket(raw, server_hostname="127.0.0.1") if wrap else raw
        sock.sendall(acks.mllp_frame(payload))
        decoder = acks.MLLPDecoder()
        while True:
            data = sock.recv(65536)
            assert data, "the listener closed the connection without answering"
            frames = decoder.feed(data)
            if frames:
                return frames[0].payload


def segments(reply: bytes) -> list[list[str]]:
    return [s.split("|") for s in reply.decode().rstrip("\r").split("\r")]


def msa(reply: bytes) -> list[str]:
    return next(s for s in segments(reply) if s[0] == "MSA")


# TLS ------------------------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
def tls_listener(
    connector: Connector,  # noqa: F811
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MLLPListener]:
    monkeypatch.setattr(ingest, "kick_worker", lambda: None)
    connector.config = {
        **connector.config,
        "tls_cert_file": str(certificate[0]),
        "tls_key_file": str(certificate[1]),
    }
    connector.save()
    server = MLLPListener(connector, host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


def test_it_accepts_hl7_over_tls_and_acknowledges_after_storing(
    tls_listener: MLLPListener, certificate: tuple[Path, Path]
) -> None:
    client = ssl.create_default_context(cafile=str(certificate[0]))

    reply = exchange(tls_listener.port, adt("TLS1").encode(), wrap=client)

    assert msa(reply)[1:3] == ["AA", "TLS1"]
    assert Message.objects.get().control_id == "TLS1"


def test_a_plain_text_sender_on_a_tls_port_gets_no_ack_and_stores_nothing(tls_listener: MLLPListener) -> None:
    with socket.create_connection(("127.0.0.1", tls_listener.port), timeout=20) as sock:
        sock.sendall(acks.mllp_frame(adt("PLAIN1").encode()))
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    assert acks.END_BLOCK not in received
    assert not Message.objects.exists()


def test_it_refuses_to_start_with_half_a_tls_configuration(connector: Connector, tmp_path: Path) -> None:  # noqa: F811
    connector.config = {**connector.config, "tls_cert_file": str(tmp_path / "missing.pem")}
    with pytest.raises(ValueError, match="tls_key_file"):
        MLLPListener(connector, port=0).prepare()
    connector.config["tls_key_file"] = str(tmp_path / "missing-key.pem")
    with pytest.raises(ValueError, match="Cannot load"):
        MLLPListener(connector, port=0).prepare()


# Batches ----------------------------------------------------------------------------------------------------

BATCH = (
    b"FHS|^~\\&|EPIC|GENHOSP|||20250101||||FILE1\r"
    b"BHS|^~\\&|EPIC|GENHOSP|||20250101||||BATCH7\r"
    b"MSH|^~\\&|EPIC|GENHOSP|HS|HS|2025||ADT^A01^ADT_A01|BAT1|P|2.5.1\rPID|1||M1\rZPI|kept\r"
    b"MSH|^~\\&|EPIC|GENHOSP|HS|HS|2025||ORU^R01^ORU_R01|BAT2|P|2.5.1\rPID|1||M2\r"
    b"MSH|^~\\&|EPIC|GENHOSP|HS|HS|2025||ADT^A03|BAT3|P|2.3\nPID|1||M3\n"
    b"BTS|3\r"
    b"FTS|1\r"
)


def test_a_batch_is_stored_message_by_message_and_answered_by_an_ack_batch(listener: MLLPListener) -> None:  # noqa: F811
    reply = exchange(listener.port, BATCH)

    parts = segments(reply)
    assert [s[0] for s in parts] == [
        "FHS",
        "BHS",
        "MSH",
        "MSA",
        "MSH",
        "MSA",
        "ERR",
        "MSH",
        "MSA",
        "BTS",
        "FTS",
    ]
    assert parts[1][11] == "BATCH7"  # BHS-12: the sender's batch control id
    assert [(s[1], s[2]) for s in parts if s[0] == "MSA"] == [("AA", "BAT1"), ("AR", "BAT2"), ("AA", "BAT3")]
    stored = {m.control_id: m for m in Message.objects.all()}
    assert set(stored) == {"BAT1", "BAT2", "BAT3"}
    assert bytes(stored["BAT1"].raw).endswith(b"ZPI|kept\r")  # each row holds its own message only
    assert not bytes(stored["BAT1"].raw).startswith(b"FHS")
    assert stored["BAT2"].status == MessageStatus.REJECTED
    assert bytes(stored["BAT3"].raw) == b"MSH|^~\\&|EPIC|GENHOSP|HS|HS|2025||ADT^A03|BAT3|P|2.3\nPID|1||M3\n"


def test_a_batch_without_messages_is_rejected_and_kept(listener: MLLPListener) -> None:  # noqa: F811
    reply = exchange(listener.port, b"BHS|^~\\&|EPIC|GENHOSP|||2025||||EMPTY\rBTS|0\r")

    assert msa(reply)[1] == "AR"
    assert Message.objects.get().status == MessageStatus.REJECTED


# Versions, Z-segments, segment endings -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"])
@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"])
def test_every_version_and_segment_ending_is_accepted_and_z_segments_are_kept(
    listener: MLLPListener,  # noqa: F811
    version: str,
    ending: str,
) -> None:
    control_id = f"V{version.replace('.', '')}E{len(ending)}{ord(ending[0])}"
    text = (
        adt(control_id).replace("|2.5.1", f"|{version}").replace("\r", ending) + f"{ending}ZPI|1|custom^value"
    )
    reply = exchange(listener.port, text.encode())

    assert msa(reply)[1:3] == ["AA", control_id]
    assert segments(reply)[0][11] == version  # the ACK answers in the sender's version
    raw = bytes(Message.objects.get().raw)
    assert raw == text.encode()
    assert parse(raw).get("ZPI-2.2") == "value"


# Enhanced acknowledgement mode ---------------------------------------------------------------------------


@pytest.fixture
def enhanced_listener(connector: Connector, monkeypatch: pytest.MonkeyPatch) -> Iterator[MLLPListener]:  # noqa: F811
    monkeypatch.setattr(ingest, "kick_worker", lambda: None)
    connector.config = {**connector.config, "enhanced_ack": True}
    connector.save()
    server = MLLPListener(connector, host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


def enhanced_adt(control_id: str, trigger: str = "A01") -> bytes:
    text = adt(control_id, trigger=trigger)
    first, rest = text.split("\r", 1)
    return (first + "|||AL|NE\r" + rest).encode()


def test_an_enhanced_mode_connector_answers_a_commit_accept(enhanced_listener: MLLPListener) -> None:
    assert msa(exchange(enhanced_listener.port, enhanced_adt("ENH1")))[1:3] == ["CA", "ENH1"]
    assert Message.objects.get().status == MessageStatus.RECEIVED


def test_an_enhanced_mode_refusal_is_a_commit_reject(enhanced_listener: MLLPListener) -> None:
    reply = exchange(enhanced_listener.port, enhanced_adt("ENH2", trigger="A99"))
    assert msa(reply)[1] == "CR"
    assert next(s for s in segments(reply) if s[0] == "ERR")[3].startswith("201")


def test_an_enhanced_mode_commit_failure_is_a_commit_error(
    enhanced_listener: MLLPListener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing(items: list[ingest.InboundItem], **kwargs: object) -> list[ingest.StoreOutcome]:
        raise OperationalError("down")

    monkeypatch.setattr(ingest, "store_messages", failing)
    assert msa(exchange(enhanced_listener.port, enhanced_adt("ENH3")))[1] == "CE"


def test_without_msh15_and_msh16_the_original_mode_answers_aa(listener: MLLPListener) -> None:  # noqa: F811
    assert msa(exchange(listener.port, adt("ORIG1").encode()))[1] == "AA"


def test_msh15_and_msh16_alone_keep_the_original_mode(listener: MLLPListener) -> None:  # noqa: F811
    # Senders fill MSH-15/16 out of habit and still expect AA; enhanced mode is the connector's choice.
    assert msa(exchange(listener.port, enhanced_adt("ORIG2")))[1:3] == ["AA", "ORIG2"]
