"""Files over SFTP against a real asyncssh server on an ephemeral localhost port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from connectors.files.adapter import FilesAdapter
from connectors.files.poller import poll_connector
from connectors.files.transport import SftpTransport
from connectors.simulators.sftp_server import SftpServer
from healthsync.choices import Direction, MessageStatus, Protocol
from healthsync.errors import ConnectorError
from healthsync.models import Connector, Delivery, Message, System
from tests.connectors.test_files import CSV_LAYOUT, PAYROLL


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SftpServer]:
    root = tmp_path / "sftp"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    with SftpServer(str(root), username="payroll", password="s3cret") as sftp:
        yield sftp


def _location(server: SftpServer, path: str) -> dict[str, object]:
    """The simulator's location: without its password, which is a connector secret."""
    location = server.connector_config(path)
    assert "password" not in location
    return location


@pytest.mark.django_db
def test_it_picks_payroll_files_up_over_sftp(server: SftpServer, tmp_path: Path) -> None:
    system = System.objects.create(code="payroll", name="Payroll")
    connector = Connector(
        system=system,
        code="payroll-sftp",
        name="Payroll SFTP drop",
        direction=Direction.INBOUND,
        protocol=Protocol.FILE,
        config={
            "source": _location(server, "/in"),
            "settle_seconds": 0,
            "layout": CSV_LAYOUT,
            "pattern": "*.csv",
            "message_type": "payroll_allocation",
        },
    )
    connector.secrets = {"sftp_password": "s3cret"}
    connector.save()
    assert FilesAdapter().validate_config(Direction.INBOUND, connector.config) == []
    connector = Connector.objects.get(pk=connector.pk)  # the password comes back from the encrypted store
    assert "s3cret" not in connector.secrets_token
    drop = tmp_path / "sftp" / "in"
    (drop / "jan.csv").write_bytes(PAYROLL)
    (drop / "bad.csv").write_bytes(b"nope\n")
    (drop / "notes.txt").write_bytes(b"ignored by the pattern")
    report = poll_connector(connector)
    assert len(report.stored) == 1 and report.failed[0][0] == "bad.csv"
    stored = Message.objects.get(pk=report.stored[0])
    assert bytes(stored.raw) == PAYROLL and stored.status == MessageStatus.RECEIVED
    assert Message.objects.get(status=MessageStatus.REJECTED).raw == b"nope\n"
    assert sorted(p.name for p in drop.iterdir()) == ["archive", "error", "notes.txt"]
    assert any(p.name.endswith("bad.csv.reason.txt") for p in (drop / "error").iterdir())


def test_send_writes_atomically_over_sftp(server: SftpServer, tmp_path: Path) -> None:
    connector = Connector(
        system=System(code="erp", name="ERP"),
        code="gl-sftp",
        direction=Direction.OUTBOUND,
        protocol=Protocol.FILE,
        config={
            "destination": _location(server, "/out"),
            "file_name": "gl-{key}.csv",
            "layout": CSV_LAYOUT,
        },
    )
    connector.secrets = {"sftp_password": "s3cret"}
    records = [{"employee_id": "E1", "cost_center": "ICU", "amount": "5.00", "period_end": "2026-01-31"}]
    result = FilesAdapter().send(connector, Delivery(idempotency_key="k1", payload={"records": records}))
    out = tmp_path / "sftp" / "out"
    assert [p.name for p in out.iterdir()] == [result.external_id]
    assert (out / result.external_id).read_bytes().startswith(b"employee_id,cost_center,amount,period_end\n")


def test_it_refuses_a_server_with_another_host_key(server: SftpServer) -> None:
    config = server.connector_config("/in") | {"password": server.password}
    config["host_key"] = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    with pytest.raises(ConnectorError) as caught:
        SftpTransport(config, timeout=5)
    assert caught.value.permanent and "host key" in caught.value.message


def test_it_refuses_wrong_credentials(server: SftpServer) -> None:
    config = server.connector_config("/in") | {"password": "wrong"}
    with pytest.raises(ConnectorError) as caught:
        SftpTransport(config, timeout=5)
    assert caught.value.permanent and "credentials" in caught.value.message


def test_an_unreachable_server_is_a_transient_error(server: SftpServer) -> None:
    config = server.connector_config("/in") | {"port": 9, "password": server.password}
    with pytest.raises(ConnectorError) as caught:
        SftpTransport(config, timeout=5)
    assert not caught.value.permanent


def test_a_missing_sftp_secret_is_a_permanent_error_and_a_legacy_inline_password_still_works(
    server: SftpServer, tmp_path: Path
) -> None:
    connector = Connector(
        code="gl-sftp",
        direction=Direction.OUTBOUND,
        protocol=Protocol.FILE,
        config={"destination": _location(server, "/out"), "layout": CSV_LAYOUT},
    )
    records = [{"employee_id": "E1", "cost_center": "ICU", "amount": "5.00", "period_end": "2026-01-31"}]
    with pytest.raises(ConnectorError) as caught:
        FilesAdapter().send(connector, Delivery(idempotency_key="k1", payload={"records": records}))
    assert caught.value.permanent and "sftp_password" in caught.value.message
    # Written before secrets existed: the password inline in the location.
    connector.config["destination"] = server.connector_config("/out") | {"password": server.password}
    FilesAdapter().send(connector, Delivery(idempotency_key="k1", payload={"records": records}))
    assert len(list((tmp_path / "sftp" / "out").iterdir())) == 1


def test_test_connection_lists_the_sftp_folder(server: SftpServer) -> None:
    connector = Connector(
        code="payroll-sftp",
        direction=Direction.INBOUND,
        protocol=Protocol.FILE,
        timeout_seconds=5,
        config={"source": _location(server, "/in"), "layout": CSV_LAYOUT},
    )
    connector.secrets = {"sftp_password": "wrong"}
    ok, detail = FilesAdapter().test_connection(connector)
    assert not ok and "credentials" in detail
    connector.secrets = {"sftp_password": "s3cret"}
    ok, detail = FilesAdapter().test_connection(connector)
    assert ok and detail == "sftp:/in lists 0 files"
