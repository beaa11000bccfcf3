"""`mllp_listener --processes N`: several listener processes share one port (SO_REUSEPORT)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from connectors.hl7v2 import ack as acks
from healthsync import benchmark
from healthsync.choices import Direction, MessageStatus, Protocol, SystemKind
from healthsync.models import Connector, Message, System

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT"),
]


def test_two_listener_processes_share_the_port_and_store_every_message_once() -> None:
    system = System.objects.create(code="epic", name="Epic", kind=SystemKind.EHR)
    Connector.objects.create(
        system=system,
        code="epic-multi",
        name="Epic multi",
        direction=Direction.INBOUND,
        protocol=Protocol.HL7V2,
        config={"accepted_types": ["ADT^A01"]},
    )
    codes: list[str] = []
    with benchmark.listener_process("epic-multi", extra=["--processes", "2"]) as (process, port):
        for n in range(12):  # new connections: the kernel spreads them over both processes
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(acks.mllp_frame(benchmark.sample_adt(f"MP{n}")))
                decoder = acks.MLLPDecoder()
                frames: list[acks.Frame] = []
                while not frames:
                    data = sock.recv(65536)
                    assert data
                    frames = decoder.feed(data)
                codes.append(frames[0].payload.split(b"MSA|", 1)[1][:2].decode())
        assert process.poll() is None
    assert process.returncode == 0  # SIGTERM reached both children and they stopped cleanly
    assert codes == ["AA"] * 12
    assert Message.objects.filter(status=MessageStatus.RECEIVED).count() == 12


def test_processes_need_a_fixed_port() -> None:
    System.objects.create(code="epic", name="Epic", kind=SystemKind.EHR)
    result = subprocess.run(
        [sys.executable, benchmark.manage_py(), "mllp_listener", "--port", "0", "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": benchmark.database_url()},
    )
    assert result.returncode != 0
    assert "--processes needs a fixed --port" in result.stderr
