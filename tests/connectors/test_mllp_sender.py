"""The outbound MLLP sender against real peers on real sockets: hl7apy's MLLPServer and a scripted peer that
answers late, for another message, with AE/AR, or with garbage."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hl7apy.core import Message as HL7apyMessage
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from connectors.hl7v2.ack import MLLPDecoder, mllp_frame
from connectors.hl7v2.adapter import HL7v2Adapter
from connectors.hl7v2.reader import parse
from connectors.hl7v2.sender import MLLPSender, SenderConfig, close_all, control_id_for
from connectors.simulators.hl7_builder import adt_a01
from healthsync.choices import DeliveryStatus, Direction, ExceptionKind, Protocol
from healthsync.deliveries import deliver
from healthsync.errors import ConnectorError
from healthsync.models import Connector, Delivery, ExceptionItem, System
from tests.connectors.tls import self_signed

Script = Callable[[int, str], list[bytes]]


def ack(code: str, control_id: str, text: str = "") -> bytes:
    return mllp_frame(
        f"MSH|^~\\&|LAB|LABFAC|HEALTHSYNC|GENHOSP|20260103120501||ACK^A01^ACK|A{control_id}|P|2.5.1\r"
        f"MSA|{code}|{control_id}|{text}\r".encode()
    )


class ScriptedPeer:
    """A receiver on 127.0.0.1:<free port> that answers each message with what `script(n, MSH-10)` returns."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.received: list[str] = []
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> ScriptedPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        close_all()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            decoder = MLLPDecoder()
            while data := conn.recv(65536):
                for frame in decoder.feed(data):
                    text = frame.payload.decode()
                    self.received.append(text)
                    for reply in self.script(len(self.received), parse(text).header.control_id):
                        if reply == b"CLOSE":
                            conn.close()
                            return
                        conn.sendall(reply)
        except OSError:
            pass
        finally:
            conn.close()


def sender(port: int, timeout: float = 10.0, **kw: Any) -> MLLPSender:
    return MLLPSender(SenderConfig(host="127.0.0.1", port=port, ack_timeout=timeout, **kw))


def message(control_id: str) -> str:
    return adt_a01(control_id=control_id)


def failure(script: Script, timeout: float = 10.0) -> ConnectorError:
    """The error a send of one message to a peer playing `script` ends in."""
    with ScriptedPeer(script) as peer, pytest.raises(ConnectorError) as error:
        sender(peer.port, timeout=timeout).send(message("M1"), control_id="M1")
    return error.value


# Scripted peer ------------------------------------------------------------------------------------------


def test_it_returns_the_ack_that_names_its_own_control_id() -> None:
    with ScriptedPeer(lambda n, cid: [ack("AA", cid)]) as peer:
        result = sender(peer.port).send(message("M1"), control_id="M1")
    assert (result.code, result.control_id, result.discarded) == ("AA", "M1", 0)
    assert parse(peer.received[0]).header.control_id == "M1"


def test_a_late_ack_for_an_earlier_message_is_discarded_not_taken_for_the_current_one() -> None:
    # Message 1 gets no answer in time; the ACK for it arrives just before message 2's own ACK.
    def script(n: int, cid: str) -> list[bytes]:
        return [] if n == 1 else [ack("AR", "M1", "too late"), ack("AA", cid)]

    with ScriptedPeer(script) as peer:
        mllp = sender(peer.port, timeout=0.5)
        with pytest.raises(ConnectorError) as timed_out:
            mllp.send(message("M1"), control_id="M1")
        mllp.config.ack_timeout = 10.0
        result = mllp.send(message("M2"), control_id="M2")
    assert not timed_out.value.permanent
    assert "No ACK for M1" in timed_out.value.message
    assert (result.code, result.control_id, result.discarded) == ("AA", "M2", 1)
    assert peer.connections == 1  # the same connection: that is where the late ACK could be mistaken


def test_only_acks_for_other_messages_end_in_a_transient_timeout() -> None:
    error = failure(lambda n, cid: [ack("AA", "SOMEONE-ELSE")], timeout=0.5)
    assert not error.permanent
    assert "1 other frame(s) discarded" in error.message


def test_ae_is_a_transient_error_with_the_receivers_text() -> None:
    error = failure(lambda n, cid: [ack("AE", cid, "database busy")])
    assert not error.permanent
    assert "AE" in error.message and "database busy" in error.message
    assert error.response is not None and error.response["ack_code"] == "AE"


def test_ar_is_a_permanent_error() -> None:
    error = failure(lambda n, cid: [ack("AR", cid, "unknown patient")])
    assert error.permanent
    assert "unknown patient" in error.message


def test_garbage_before_the_ack_is_discarded() -> None:
    garbage = [b"HELLO\r\n", mllp_frame(b"not hl7 at all"), mllp_frame(b"MSH|^~\\&|X|Y\rPID|1\r")]
    with ScriptedPeer(lambda n, cid: [*garbage, ack("AA", cid)]) as peer:
        result = sender(peer.port).send(message("M1"), control_id="M1")
    assert result.code == "AA"
    assert result.discarded == 3


def test_garbage_only_is_a_transient_timeout() -> None:
    error = failure(lambda n, cid: [b"\x0bgarbage\x1c\r"], timeout=0.5)
    assert not error.permanent


def test_a_peer_that_hangs_up_without_an_ack_is_a_transient_error() -> None:
    error = failure(lambda n, cid: [b"CLOSE"])
    assert not error.permanent
    assert "closed the connection" in error.message


def test_connection_refused_is_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(ConnectorError) as error:
        sender(port).send(message("M1"), control_id="M1")
    assert not error.value.permanent
    assert "connect" in error.value.message


# hl7apy's MLLP server as the foreign receiver ---------------------------------------------------------------


class Hl7apyAck(AbstractHandler):
    """Acknowledges with hl7apy's own message model; answers AR for a patient it does not know."""

    received: list[str] = []

    def reply(self) -> str:
        incoming = parse_message(self.incoming_message)
        Hl7apyAck.received.append(self.incoming_message)
        code = "AR" if incoming.pid.pid_3.to_er7().startswith("UNKNOWN") else "AA"
        res = HL7apyMessage("ACK", version="2.5")
        res.msh.msh_9 = "ACK^A01^ACK"
        res.msh.msh_10 = "ACK" + incoming.msh.msh_10.to_er7()[:15]
        res.msa.msa_1 = code
        res.msa.msa_2 = incoming.msh.msh_10.to_er7()
        if code == "AR":
            res.msa.msa_3 = "Unknown patient"
        return mllp_frame(res.to_er7().encode()).decode()


@pytest.fixture
def hl7apy_server() -> Iterator[MLLPServer]:
    Hl7apyAck.received = []
    server = MLLPServer("127.0.0.1", 0, {"ADT^A01": (Hl7apyAck,), "ADT^A01^ADT_A01": (Hl7apyAck,)}, timeout=5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    close_all()


def test_hl7apy_server_acknowledges_each_message_on_its_own_connection(hl7apy_server: MLLPServer) -> None:
    mllp = sender(hl7apy_server.server_address[1])
    first = mllp.send(message("HA1"), control_id="HA1")
    # hl7apy closes the connection after each ACK: the sender notices and reconnects.
    second = mllp.send(message("HA2"), control_id="HA2")
    assert (first.code, first.control_id) == ("AA", "HA1")
    assert (second.code, second.control_id) == ("AA", "HA2")
    assert [parse(m).header.control_id for m in Hl7apyAck.received] == ["HA1", "HA2"]


def test_hl7apy_server_rejection_is_permanent(hl7apy_server: MLLPServer) -> None:
    with pytest.raises(ConnectorError) as error:
        sender(hl7apy_server.server_address[1]).send(
            adt_a01(control_id="HA3", mrn="UNKNOWN1"), control_id="HA3"
        )
    assert error.value.permanent
    assert "Unknown patient" in error.value.message


# TLS --------------------------------------------------------------------------------------------------------


@pytest.fixture
def tls_peer(tmp_path: Path) -> Iterator[tuple[ScriptedPeer, Path]]:
    cert, key = self_signed(tmp_path, "peer")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with ScriptedPeer(lambda n, cid: [ack("AA", cid)], tls=context) as peer:
        yield peer, cert


def test_it_sends_over_tls_to_a_peer_its_ca_vouches_for(tls_peer: tuple[ScriptedPeer, Path]) -> None:
    peer, cert = tls_peer
    result = sender(peer.port, tls=True, tls_ca_file=str(cert)).send(message("T1"), control_id="T1")
    assert result.code == "AA"
    assert parse(peer.received[0]).header.control_id == "T1"


def test_a_peer_certificate_the_ca_does_not_vouch_for_is_a_permanent_error(
    tls_peer: tuple[ScriptedPeer, Path], tmp_path: Path
) -> None:
    peer, _ = tls_peer
    stranger, _ = self_signed(tmp_path, "stranger")
    with pytest.raises(ConnectorError) as error:
        sender(peer.port, tls=True, tls_ca_file=str(stranger)).send(message("T2"), control_id="T2")
    assert error.value.permanent
    assert not peer.received


# The adapter as a delivery destination ----------------------------------------------------------------------


def _hl7_connector(port: int, **config: Any) -> Connector:
    system = System.objects.create(code="lab", name="Lab system")
    return Connector.objects.create(
        system=system,
        code="lab-mllp",
        direction=Direction.OUTBOUND,
        protocol=Protocol.HL7V2,
        timeout_seconds=5,
        retry_max_attempts=3,
        config={"host": "127.0.0.1", "port": port, "operations": {"send_adt": {}}, **config},
    )


def _delivery(connector: Connector, key: str = "ehr:encounter:V1:1") -> Delivery:
    return Delivery.objects.create(
        connector=connector,
        operation="send_adt",
        idempotency_key=key,
        payload={"hl7": adt_a01(control_id="ORIGINAL").replace("\r", "\n")},
        workflow="test",
        business_key="V1",
    )


@pytest.mark.django_db
def test_a_delivery_to_an_hl7_connector_succeeds_with_the_ack_and_a_stable_control_id() -> None:
    with ScriptedPeer(lambda n, cid: [ack("AA", cid)]) as peer:
        delivery = _delivery(_hl7_connector(peer.port))
        assert deliver(delivery.pk) == DeliveryStatus.SUCCEEDED
    delivery.refresh_from_db()
    expected = control_id_for("ehr:encounter:V1:1")
    assert delivery.external_id == expected
    assert delivery.response["ack_code"] == "AA"
    sent = parse(peer.received[0])
    assert sent.header.control_id == expected
    assert "\n" not in peer.received[0]  # segments go out CR-separated whatever the payload used


@pytest.mark.django_db
def test_a_rejected_delivery_fails_and_raises_an_exception_item() -> None:
    with ScriptedPeer(lambda n, cid: [ack("AR", cid, "no such account")]) as peer:
        delivery = _delivery(_hl7_connector(peer.port))
        assert deliver(delivery.pk) == DeliveryStatus.FAILED
    item = ExceptionItem.objects.get(delivery=delivery)
    assert item.kind == ExceptionKind.DESTINATION_REJECTED
    assert "no such account" in item.reason


@pytest.mark.django_db
def test_an_unanswered_delivery_is_retried() -> None:
    with ScriptedPeer(lambda n, cid: []) as peer:
        delivery = _delivery(_hl7_connector(peer.port, ack_timeout_seconds=0.5))
        assert deliver(delivery.pk) == DeliveryStatus.RETRYING
    delivery.refresh_from_db()
    assert "No ACK" in delivery.last_error


def test_adapter_validates_outbound_config_and_tests_the_connection() -> None:
    adapter = HL7v2Adapter()
    assert adapter.validate_config(Direction.OUTBOUND, {"host": "lab", "port": 2575}) == []
    errors = adapter.validate_config(Direction.OUTBOUND, {"port": 0, "tls_cert_file": "a.pem"})
    assert any("host" in e for e in errors) and any("port" in e for e in errors)
    assert any("tls_key_file" in e for e in errors)
    with ScriptedPeer(lambda n, cid: []) as peer:
        connector = Connector(
            code="c", direction=Direction.OUTBOUND, config={"host": "127.0.0.1", "port": peer.port}
        )
        ok, detail = adapter.test_connection(connector)
    assert ok, detail
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed_port = probe.getsockname()[1]
    connector.config["port"] = closed_port
    ok, detail = adapter.test_connection(connector)
    assert not ok and "does not accept connections" in detail


def test_an_inbound_connector_test_checks_the_listeners_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        connector = Connector(
            code="in", direction=Direction.INBOUND, config={"port": listening.getsockname()[1]}
        )
        ok, detail = HL7v2Adapter().test_connection(connector)
    assert ok, detail


@pytest.mark.django_db
def test_a_payload_that_is_not_hl7_fails_for_good_without_a_connection() -> None:
    with ScriptedPeer(lambda n, cid: [ack("AA", cid)]) as peer:
        delivery = _delivery(_hl7_connector(peer.port))
        delivery.payload = {"hl7": "PID|1||MRN1\r"}
        delivery.save()
        assert deliver(delivery.pk) == DeliveryStatus.FAILED
    delivery.refresh_from_db()
    assert "MSH" in delivery.last_error
    assert peer.connections == 0
