"""Flat files: declared layouts read and written, the folder poller (ready checks, archive, error + reason),
and atomic outbound files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from connectors.files.adapter import FilesAdapter
from connectors.files.layout import FileFormatError, read_records, validate_layout, write_records
from connectors.files.poller import poll_all, poll_connector
from connectors.x12.payer import build_835
from connectors.x12.reader import parse
from connectors.x12.validate import validate_x12
from healthsync.choices import Direction, MessageStatus, Protocol
from healthsync.models import Connector, Delivery, Message, System

CSV_LAYOUT = {
    "format": "csv",
    "fields": [
        {"name": "employee_id", "required": True},
        {"name": "cost_center", "required": True},
        {"name": "amount", "type": "decimal", "required": True},
        {"name": "period_end", "type": "date"},
    ],
}
FIXED_LAYOUT = {
    "format": "fixed",
    "fields": [
        {"name": "account", "width": 6},
        {"name": "cost_center", "width": 5},
        {
            "name": "amount",
            "width": 10,
            "type": "decimal",
            "align": "right",
            "pad": "0",
            "implied_decimals": 2,
        },
        {"name": "date", "width": 8, "type": "date"},
    ],
}
PAYROLL = b"employee_id,cost_center,amount,period_end\nE1,ICU,1200.50,2026-01-31\nE2,ER,800,2026-01-31\n"


def test_it_reads_a_csv_by_its_declared_columns() -> None:
    records = read_records(PAYROLL, CSV_LAYOUT)
    assert records == [
        {"employee_id": "E1", "cost_center": "ICU", "amount": "1200.50", "period_end": "2026-01-31"},
        {"employee_id": "E2", "cost_center": "ER", "amount": "800", "period_end": "2026-01-31"},
    ]


def test_fixed_width_records_round_trip() -> None:
    records = [{"account": "4000", "cost_center": "ICU", "amount": "1234.5", "date": "2026-01-31"}]
    data = write_records(records, FIXED_LAYOUT)
    assert data == b"4000  ICU  000012345020260131\n"
    assert read_records(data, FIXED_LAYOUT) == [
        {"account": "4000", "cost_center": "ICU", "amount": "1234.50", "date": "2026-01-31"}
    ]


@pytest.mark.parametrize(
    ("data", "layout", "words", "line"),
    [
        (b"employee_id,amount\nE1,5\n", CSV_LAYOUT, "lacks the column(s) cost_center", 1),
        (PAYROLL.replace(b"1200.50", b"12x"), CSV_LAYOUT, "amount is not a valid decimal", 2),
        (PAYROLL.replace(b"E2,ER", b",ER"), CSV_LAYOUT, "employee_id is required", 3),
        (PAYROLL + b"E3,ER\n", CSV_LAYOUT, "2 columns where the header has 4", 4),
        (b"4000  ICU  00001234\n", FIXED_LAYOUT, "19 characters where the layout has 29", 1),
        (b"4000  ICU  000012345020261331\n", FIXED_LAYOUT, "date is not a valid date", 1),
        (b"\xff\xfe\x00", CSV_LAYOUT, "not utf-8", None),
    ],
)
def test_it_names_the_line_and_field_of_a_bad_file(
    data: bytes, layout: dict, words: str, line: int | None
) -> None:
    with pytest.raises(FileFormatError) as caught:
        read_records(data, layout)
    assert words in caught.value.message
    assert caught.value.line == line


def test_it_validates_a_declared_layout() -> None:
    errors = validate_layout({"format": "xml", "fields": [{"name": "a", "type": "blob"}, {"name": "a"}, {}]})
    assert "layout.format must be csv or fixed" in errors
    assert any("type must be" in e for e in errors)
    assert any("declared twice" in e for e in errors)
    assert any("needs a name" in e for e in errors)
    assert any("width" in e for e in validate_layout({"format": "fixed", "fields": [{"name": "a"}]}))


def test_a_value_too_wide_for_its_field_is_refused() -> None:
    with pytest.raises(FileFormatError, match="account needs 7 characters"):
        write_records([{"account": "1234567", "amount": "1", "date": "2026-01-01"}], FIXED_LAYOUT)


# Poller --------------------------------------------------------------------------------------------------


def _inbound(tmp_path: Path, protocol: str = Protocol.FILE, **config: Any) -> Connector:
    system, _ = System.objects.get_or_create(code="payroll", defaults={"name": "Payroll"})
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    return Connector.objects.create(
        system=system,
        code=f"payroll-{protocol}",
        name="Payroll drop",
        direction=Direction.INBOUND,
        protocol=protocol,
        config={
            "source": {"type": "folder", "path": str(drop)},
            "pattern": "*",
            "ready": "stable",
            "settle_seconds": 0,
            "message_type": "payroll_allocation",
            **({"layout": CSV_LAYOUT} if protocol == Protocol.FILE else {}),
            **config,
        },
    )


@pytest.mark.django_db
def test_it_stores_a_ready_file_and_archives_it(tmp_path: Path) -> None:
    connector = _inbound(tmp_path)
    (tmp_path / "drop" / "jan.csv").write_bytes(PAYROLL)
    report = poll_connector(connector)
    [message] = Message.objects.all()
    assert report.stored == [message.pk]
    assert bytes(message.raw) == PAYROLL
    assert message.status == MessageStatus.RECEIVED
    assert message.message_type == "payroll_allocation"
    assert message.control_id.startswith("jan.csv:")
    assert not (tmp_path / "drop" / "jan.csv").exists()
    assert [p.name.endswith("-jan.csv") for p in (tmp_path / "drop" / "archive").iterdir()] == [True]


@pytest.mark.django_db
def test_a_bad_file_goes_to_error_with_a_reason_and_its_bytes_are_kept(tmp_path: Path) -> None:
    connector = _inbound(tmp_path)
    bad = PAYROLL.replace(b"1200.50", b"lots")
    (tmp_path / "drop" / "feb.csv").write_bytes(bad)
    report = poll_connector(connector)
    assert report.failed == [("feb.csv", "Line 2: amount is not a valid decimal")]
    [message] = Message.objects.all()
    assert message.status == MessageStatus.REJECTED and bytes(message.raw) == bad
    assert "amount is not a valid decimal" in message.error
    errors = sorted(p.name for p in (tmp_path / "drop" / "error").iterdir())
    assert errors[0].endswith("-feb.csv") and errors[1].endswith("-feb.csv.reason.txt")
    reason = (tmp_path / "drop" / "error" / errors[1]).read_text()
    assert "Line 2: amount is not a valid decimal" in reason and f"message #{message.pk}" in reason


@pytest.mark.django_db
def test_it_never_reads_a_file_that_is_still_growing(tmp_path: Path) -> None:
    connector = _inbound(tmp_path)
    growing = tmp_path / "drop" / "mar.csv"
    growing.write_bytes(PAYROLL[:30])

    def writer_keeps_writing(_: float) -> None:
        with open(growing, "ab") as handle:
            handle.write(PAYROLL[30:])

    report = poll_connector(connector, sleep=writer_keeps_writing)
    assert report.waiting == ["mar.csv"] and not Message.objects.exists()
    report = poll_connector(connector)  # the writer is done: the next look finds it stable
    assert len(report.stored) == 1 and bytes(Message.objects.get().raw) == PAYROLL


@pytest.mark.django_db
def test_a_done_marker_says_when_a_file_is_complete(tmp_path: Path) -> None:
    connector = _inbound(tmp_path, ready="done_marker")
    (tmp_path / "drop" / "apr.csv").write_bytes(PAYROLL)
    assert poll_connector(connector).waiting == ["apr.csv"]
    (tmp_path / "drop" / "apr.csv.done").write_bytes(b"")
    assert len(poll_connector(connector).stored) == 1
    archived = sorted(p.name.split("-", 2)[2] for p in (tmp_path / "drop" / "archive").iterdir())
    assert archived == ["apr.csv", "apr.csv.done"]


@pytest.mark.django_db
def test_temporary_names_are_left_alone(tmp_path: Path) -> None:
    connector = _inbound(tmp_path, ready="temp_name")
    (tmp_path / "drop" / "may.csv.part").write_bytes(PAYROLL)
    (tmp_path / "drop" / ".jun.csv").write_bytes(PAYROLL)
    assert poll_connector(connector).stored == []
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_the_same_file_dropped_twice_is_a_duplicate(tmp_path: Path) -> None:
    connector = _inbound(tmp_path)
    for _ in range(2):
        (tmp_path / "drop" / "jan.csv").write_bytes(PAYROLL)
        poll_connector(connector)
    assert sorted(Message.objects.values_list("status", flat=True)) == [
        MessageStatus.DUPLICATE,
        MessageStatus.RECEIVED,
    ]


@pytest.mark.django_db
def test_x12_files_are_checked_by_their_envelope(tmp_path: Path) -> None:
    connector = _inbound(tmp_path, protocol=Protocol.X12, message_type="")
    remit = build_835(
        [{"claim_id": "E1", "amount": "10", "paid": "10", "adjustments": []}], control_number=3, trace="T1"
    )
    (tmp_path / "drop" / "remit.835").write_text(remit)
    (tmp_path / "drop" / "broken.835").write_text(re.sub(r"SE\*\d+\*", "SE*2*", remit))
    report = poll_connector(connector)
    assert len(report.stored) == 1 and Message.objects.get(pk=report.stored[0]).message_type == "835"
    assert report.failed[0][0] == "broken.835" and "X12 SE" in report.failed[0][1]


@pytest.mark.django_db
def test_the_command_polls_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    connector = _inbound(tmp_path)
    (tmp_path / "drop" / "jan.csv").write_bytes(PAYROLL)
    call_command("poll_files", "--connector", connector.code, "--once")
    assert "1 stored, 0 to error" in capsys.readouterr().out
    assert poll_all() == 0  # the schedule's function: nothing left to take


def test_the_adapter_validates_inbound_and_outbound_config() -> None:
    adapter = FilesAdapter()
    errors = adapter.validate_config(
        Direction.INBOUND, {"source": {"type": "sftp", "path": "/in"}, "ready": "x"}
    )
    assert "source.host is required for sftp" in errors
    assert any("host_key" in e for e in errors)
    assert any(e.startswith("ready must be") for e in errors)
    errors = adapter.validate_config(Direction.OUTBOUND, {"destination": {"path": "/o"}, "file_name": "a/b"})
    assert any("file_name" in e for e in errors) and any("layout" in e for e in errors)


# Outbound ------------------------------------------------------------------------------------------------


def _outbound(tmp_path: Path, layout: dict) -> Connector:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return Connector(
        system=System(code="erp", name="ERP"),
        code="gl-out",
        direction=Direction.OUTBOUND,
        protocol=Protocol.FILE,
        config={
            "destination": {"type": "folder", "path": str(out)},
            "file_name": "gl-{key}.txt",
            "layout": layout,
        },
    )


def test_send_writes_the_file_once_under_its_final_name(tmp_path: Path) -> None:
    connector = _outbound(tmp_path, FIXED_LAYOUT)
    delivery = Delivery(
        operation="post_gl",
        idempotency_key="erp:gl:1",
        payload={
            "records": [{"account": "4000", "cost_center": "ICU", "amount": "10", "date": "2026-01-31"}]
        },
    )
    result = FilesAdapter().send(connector, delivery)
    files = list((tmp_path / "out").iterdir())
    assert [f.name for f in files] == [result.external_id]
    assert files[0].read_bytes() == b"4000  ICU  000000100020260131\n"
    FilesAdapter().send(connector, delivery)  # a retry: same name, nothing rewritten, no temp left behind
    assert [f.name for f in (tmp_path / "out").iterdir()] == [result.external_id]


def test_send_refuses_records_that_do_not_fit(tmp_path: Path) -> None:
    from healthsync.errors import ConnectorError

    delivery = Delivery(
        operation="post_gl", idempotency_key="erp:gl:2", payload={"records": [{"amount": "x"}]}
    )
    with pytest.raises(ConnectorError) as caught:
        FilesAdapter().send(_outbound(tmp_path, FIXED_LAYOUT), delivery)
    assert caught.value.permanent and "amount is not a valid decimal" in caught.value.message
    assert list((tmp_path / "out").iterdir()) == []


def test_parse_gives_rows_to_the_mapping_engine() -> None:
    doc = FilesAdapter().parse(PAYROLL)
    assert doc.get_all("ROW[*]-employee_id") == ["E1", "E2"]
    assert doc.get("ROW[2]-amount") == "800"
    assert doc.get("ROW-cost_center") == "ICU"


def test_the_x12_adapter_can_drop_claims_as_files(tmp_path: Path) -> None:
    from connectors.x12.adapter import X12Adapter
    from tests.connectors.test_x12 import CLAIM

    out = tmp_path / "out"
    out.mkdir()
    connector = Connector(
        system=System(code="rcm", name="RCM"),
        code="rcm-x12-file",
        direction=Direction.OUTBOUND,
        protocol=Protocol.X12,
        config={"transport": "file", "file": {"destination": {"type": "folder", "path": str(out)}}},
    )
    assert X12Adapter().validate_config(Direction.OUTBOUND, connector.config) == []
    result = X12Adapter().send(
        connector, Delivery(pk=77, idempotency_key="k", payload=CLAIM, business_key="ENC1")
    )
    [written] = out.iterdir()
    assert written.name == "ENC1-000000077.x12" and result.external_id == "000000077"
    assert validate_x12(written.read_text()).ok
    assert parse(written.read_bytes()).get("CLM-1") == "ENC1001"


@pytest.mark.django_db
def test_split_rows_stores_one_message_per_record(tmp_path: Path) -> None:
    connector = _inbound(tmp_path, split="rows")
    (tmp_path / "drop" / "jan.csv").write_bytes(PAYROLL)
    report = poll_connector(connector)
    messages = list(Message.objects.order_by("id"))
    assert report.stored == [m.pk for m in messages] and len(messages) == 2
    assert bytes(messages[1].raw) == b"employee_id,cost_center,amount,period_end\nE2,ER,800,2026-01-31\n"
    assert FilesAdapter().parse(bytes(messages[1].raw)).get("ROW-employee_id") == "E2"
    assert messages[1].control_id.endswith(":2")


@pytest.mark.django_db
def test_split_rows_keeps_fixed_width_lines_as_they_came(tmp_path: Path) -> None:
    connector = _inbound(tmp_path, split="rows", layout=FIXED_LAYOUT)
    data = b"4000  ICU  000012345020260131\n4010  ER   000000010020260131\n"
    (tmp_path / "drop" / "gl.txt").write_bytes(data)
    poll_connector(connector)
    raws = [bytes(m.raw) for m in Message.objects.order_by("id")]
    assert raws == [b"4000  ICU  000012345020260131\n", b"4010  ER   000000010020260131\n"]
    doc = FilesAdapter().parse_for(connector, raws[0])
    assert doc.get("ROW-amount") == "1234.50"


def test_the_x12_envelope_reads_from_connector_config() -> None:
    from connectors.x12.build import Envelope

    env = Envelope.from_config(
        {
            "sender_id": "NORTHHOSP",
            "usage": "P",
            "billing_provider": {"name": "North Hospital", "id": "1999999984"},
        }
    )
    assert env.sender_id == "NORTHHOSP" and env.usage == "P"
    assert env.billing_provider.name == "North Hospital" and env.billing_provider.state == "IL"
