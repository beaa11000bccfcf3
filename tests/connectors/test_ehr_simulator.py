"""The reference EHR against a tiny MLLP peer on a real socket."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from connectors.hl7v2.reader import HL7Message, parse
from connectors.simulators.ehr import EhrSimulator, msa_code
from healthsync.mapping import parse_hl7_datetime

Answer = Callable[[HL7Message, int], str]


class MllpPeer:
    """Accepts MLLP connections, keeps every frame and answers each with the ACK code `answer` picks."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[HL7Message] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\x1c\x0d" in buffer:
                    frame, _, buffer = buffer.partition(b"\x1c\x0d")
                    message = parse(frame.lstrip(b"\x0b"))
                    self.received.append(message)
                    code = self.answer(message, len(self.received))
                    control_id = message.header.control_id
                    ack = f"MSH|^~\\&|HS|HS|EPIC|GENHOSP|20260101||ACK|A{control_id}|P|2.5.1\rMSA|{code}|{control_id}\r"
                    conn.sendall(b"\x0b" + ack.encode() + b"\x1c\x0d")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def peer_factory() -> Iterator[Callable[[Answer], MllpPeer]]:
    peers: list[MllpPeer] = []

    def make(answer: Answer) -> MllpPeer:
        peers.append(MllpPeer(answer))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()


def _run(simulator: EhrSimulator) -> None:
    thread = simulator.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the simulator did not finish its encounters"


def _fast(port: int, **kwargs: object) -> EhrSimulator:
    options: dict = {"rate_per_s": 500.0, "seed": 7, "stay_seconds": (0.0, 0.01), "retry_seconds": 0.01}
    options.update(kwargs)
    return EhrSimulator("127.0.0.1", port, **options)


def _by_encounter(messages: list[HL7Message]) -> dict[str, list[str]]:
    flows: dict[str, list[str]] = {}
    for message in messages:
        flows.setdefault(message.get("PV1-19.1"), []).append(message.header.message_type)
    return flows


def test_it_sends_admit_then_charges_then_discharge_for_each_encounter(peer_factory) -> None:
    peer = peer_factory(lambda message, n: "AA")
    simulator = _fast(peer.port, max_encounters=5)
    _run(simulator)

    flows = _by_encounter(peer.received)
    assert len(flows) == 5
    for types in flows.values():
        assert types[0] == "ADT^A01"
        assert types[-1] == "ADT^A03"
        assert set(types[1:-1]) == {"DFT^P03"}
    assert simulator.counts["AA"] == len(peer.received)
    assert len({m.header.control_id for m in peer.received}) == len(peer.received)


def test_it_resends_a_message_answered_ae_and_keeps_the_encounter_in_order(peer_factory) -> None:
    peer = peer_factory(lambda message, n: "AE" if n == 2 else "AA")
    simulator = _fast(peer.port, max_encounters=1)
    _run(simulator)

    control_ids = [m.header.control_id for m in peer.received]
    assert control_ids[1] == control_ids[2], "the message answered AE is sent again"
    assert simulator.counts["AE"] == 1
    assert simulator.counts["resent"] == 1
    types = [m.header.message_type for m in peer.received]
    assert types[0] == "ADT^A01" and types[-1] == "ADT^A03"
    assert len(set(control_ids)) == len(control_ids) - 1


def test_it_does_not_resend_a_message_answered_ar(peer_factory) -> None:
    peer = peer_factory(lambda message, n: "AR" if n == 1 else "AA")
    simulator = _fast(peer.port, max_encounters=1)
    _run(simulator)

    control_ids = [m.header.control_id for m in peer.received]
    assert len(set(control_ids)) == len(control_ids)
    assert simulator.counts["AR"] == 1
    assert peer.received[-1].header.message_type == "ADT^A03"


def _gaps(discharge: HL7Message) -> set[str]:
    gaps = set()
    if not discharge.get("IN1-3.1"):
        gaps.add("insurance")
    if not discharge.get_all("DG1[*]-3.1"):
        gaps.add("diagnosis")
    if not discharge.get("PV1-7.1"):
        gaps.add("attending")
    if not discharge.get("PV1-20.1"):
        gaps.add("financial_class")
    return gaps


def test_every_discharge_lacks_one_billing_item_when_the_missing_share_is_one(peer_factory) -> None:
    peer = peer_factory(lambda message, n: "AA")
    _run(_fast(peer.port, max_encounters=12, missing_share=1.0))

    discharges = [m for m in peer.received if m.header.message_type == "ADT^A03"]
    assert len(discharges) == 12
    assert all(len(_gaps(d)) == 1 for d in discharges)
    # The gap is not filled in by the admission either.
    admits = {m.get("PV1-19.1"): m for m in peer.received if m.header.message_type == "ADT^A01"}
    for discharge in discharges:
        assert _gaps(admits[discharge.get("PV1-19.1")]) == _gaps(discharge)


def test_no_discharge_lacks_anything_when_the_missing_share_is_zero(peer_factory) -> None:
    peer = peer_factory(lambda message, n: "AA")
    _run(_fast(peer.port, max_encounters=8, missing_share=0.0))

    discharges = [m for m in peer.received if m.header.message_type == "ADT^A03"]
    assert len(discharges) == 8
    assert all(_gaps(d) == set() for d in discharges)


def test_business_times_lie_in_the_past_days_in_a_sensible_order(peer_factory) -> None:
    peer = peer_factory(lambda message, n: "AA")
    _run(_fast(peer.port, max_encounters=4))
    now = datetime.now(UTC)

    for message in peer.received:
        admitted = parse_hl7_datetime(message.get("PV1-44.1"))
        assert admitted is not None and admitted < now
        if message.header.message_type == "ADT^A03":
            discharged = parse_hl7_datetime(message.get("PV1-45.1"))
            assert discharged is not None and admitted < discharged < now
        for service in message.get_all("FT1[*]-4.1"):
            service_time = parse_hl7_datetime(service)
            assert service_time is not None and admitted <= service_time < now


def test_it_logs_counts_and_never_patient_data(peer_factory, caplog: pytest.LogCaptureFixture) -> None:
    peer = peer_factory(lambda message, n: "AA")
    caplog.set_level(logging.INFO, logger="connectors.simulators.ehr")
    _run(_fast(peer.port, max_encounters=3))

    text = caplog.text
    assert "AA=" in text
    for message in peer.received:
        assert message.get("PID-3.1") not in text
        assert message.get("PID-5.1") not in text


def test_it_keeps_trying_when_nothing_listens_and_stops_on_request() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    simulator = _fast(port, rate_per_s=50.0)
    simulator.start()
    try:
        for _ in range(100):
            if simulator.counts["error"] >= 1:
                break
            threading.Event().wait(0.05)
    finally:
        simulator.stop()
    assert simulator.counts["error"] >= 1
    assert simulator.counts["AA"] == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"rate_per_s": 0}, "rate_per_s"), ({"missing_share": 1.5}, "missing_share")],
)
def test_it_rejects_bad_settings(kwargs: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        EhrSimulator("127.0.0.1", 2575, **kwargs)


@pytest.mark.parametrize(
    ("ack", "code"),
    [
        (b"MSH|^~\\&|A|B\rMSA|AA|1\r", "AA"),
        (b"MSH|^~\\&|A|B\rMSA|CE|1\r", "AE"),
        (b"MSH|^~\\&|A|B\nMSA|AR|1\n", "AR"),
        (b"MSH|^~\\&|A|B\rMSA|ZZ|1\r", "unreadable"),
        (b"not an ack", "unreadable"),
    ],
)
def test_it_reads_the_ack_code(ack: bytes, code: str) -> None:
    assert msa_code(ack) == code
