"""Files adapter: flat files in (poller.py) and out (send), CSV or fixed width per a declared layout.

Outbound config::

    {"destination": {"type": "folder", "path": "/data/gl-out"},   # or an sftp location
     "file_name": "gl-{key}.csv",                                  # {key}: a hash of the idempotency key,
                                                                   # {date}: today (YYYYMMDD)
     "layout": {...}}

The delivery's payload is {"records": [...], "file_name": optional override}. The file is written under a
temporary name and renamed, so a reader never sees it half written; when the file is already there (a retry
after the write succeeded) it is not written again. external_id = the file name.

Inbound: `parse(raw)` reads a CSV with a header row (rows become ``ROW[*]-<column>`` paths for the mapping
engine). A fixed-width file needs its layout, which `parse` does not get: use `parse_for(connector, raw)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from connectors.files.layout import FileFormatError, read_records, validate_layout, write_records
from connectors.files.poller import validate_source_config
from connectors.files.transport import connector_secrets, open_transport, validate_location
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery


@dataclass(frozen=True)
class FileHeader:
    control_id: str = ""
    message_type: str = ""


class FileDocument:
    """A flat file's records, readable by the mapping engine: ROW-col (first row), ROW[2]-col, ROW[*]-col."""

    def __init__(self, records: list[dict[str, str]], message_type: str = "") -> None:
        self.records = records
        self.header = FileHeader(message_type=message_type)

    def get(self, path: str) -> str:
        values = self._read(path)
        return values[0] if values else ""

    def get_all(self, path: str) -> list[str]:
        return self._read(path)

    def _read(self, path: str) -> list[str]:
        seg, _, column = path.partition("-")
        if seg == "ROW[*]":
            rows = self.records
        elif seg == "ROW":
            rows = self.records[:1]
        elif seg.startswith("ROW[") and seg.endswith("]") and seg[4:-1].isdigit():
            index = int(seg[4:-1])
            rows = self.records[index - 1 : index] if index > 0 else []
        else:
            raise ValueError(f"{path!r} is not a file path such as ROW[*]-amount")
        if not column:
            return [",".join(row.values()) for row in rows]
        return [row.get(column, "") for row in rows]


def validate_destination(config: dict[str, Any]) -> list[str]:
    return [f"destination.{e}" for e in validate_location(config.get("destination"))]


def write_file(
    config: dict[str, Any],
    name: str,
    data: bytes,
    *,
    timeout: float = 10.0,
    secrets: dict[str, str] | None = None,
) -> str:
    """Write `data` as `name` at the config's destination, atomically; returns where it went.

    `secrets` are the connector's (the SFTP password or key, transport.SFTP_SECRETS)."""
    destination = config["destination"]
    with open_transport(destination, timeout=timeout, secrets=secrets) as transport:
        if not transport.exists(name):
            transport.write(name, data)
    return f"{destination.get('type', 'folder')}:{destination['path'].rstrip('/')}/{name}"


class FilesAdapter:
    protocol = Protocol.FILE

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        if direction == Direction.INBOUND:
            return validate_source_config(config, Protocol.FILE)
        errors = validate_destination(config) + validate_layout(config.get("layout"))
        name = config.get("file_name", "{key}.csv")
        if not isinstance(name, str) or "/" in name or not name.strip():
            errors.append("file_name must be a file name (no directories), e.g. gl-{date}-{key}.csv")
        return errors

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """Open the source (inbound) or destination (outbound) folder and list it; nothing is moved."""
        config = connector.config or {}
        location = config.get("source" if connector.direction == Direction.INBOUND else "destination")
        return check_location(connector, location, missing="no valid source/destination location")

    def parse(self, raw: bytes) -> FileDocument:
        return FileDocument(_csv_records(raw))

    def parse_for(self, connector: Connector, raw: bytes) -> FileDocument:
        """Parse with the connector's declared layout (fixed-width files need it)."""
        config = connector.config or {}
        layout = config.get("layout")
        if not isinstance(layout, dict):
            return self.parse(raw)
        return FileDocument(read_records(raw, layout), str(config.get("message_type") or ""))

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        config = connector.config or {}
        payload = delivery.payload or {}
        records = payload.get("records")
        if not isinstance(records, list):
            raise ConnectorError("The delivery has no records to write", permanent=True)
        try:
            data = write_records(records, config["layout"])
        except FileFormatError as exc:
            raise ConnectorError(
                f"The records do not fit the layout: {exc.message}", permanent=True
            ) from None
        key = hashlib.sha256(delivery.idempotency_key.encode()).hexdigest()[:16]
        template = str(payload.get("file_name") or config.get("file_name") or "{key}.csv")
        name = template.format(key=key, date=date.today().strftime("%Y%m%d"))
        if "/" in name or name.startswith("."):
            raise ConnectorError(f"{name!r} is not a plain file name", permanent=True)
        where = write_file(
            config, name, data, timeout=connector.timeout_seconds, secrets=connector_secrets(connector)
        )
        return SendResult(
            response={"file": where, "records": len(records), "bytes": len(data)}, external_id=name
        )


def _csv_records(raw: bytes) -> list[dict[str, str]]:
    import csv
    import io

    text = raw.decode("utf-8-sig", errors="strict")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise FileFormatError("The file is empty")
    header = [c.strip() for c in rows[0]]
    records = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise FileFormatError(
                f"Line {number}: {len(row)} columns where the header has {len(header)}", line=number
            )
        records.append(dict(zip(header, (c.strip() for c in row), strict=True)))
    return records


def check_location(connector: Connector, location: Any, *, missing: str) -> tuple[bool, str]:
    """Open a folder or SFTP location with the connector's secrets and list it; nothing is moved.

    Shared by every connector that reads or writes files (files, X12 over a mailbox); `missing` names what
    the connector lacks when the location is not valid.
    """
    if validate_location(location):
        return False, f"The connector has {missing}"
    try:
        with open_transport(
            location, timeout=connector.timeout_seconds, secrets=connector_secrets(connector)
        ) as transport:
            count = len(transport.list(""))
    except ConnectorError as exc:
        return False, exc.message
    except OSError as exc:
        return False, f"The folder cannot be listed: {exc.strerror or type(exc).__name__}"
    return True, f"{location.get('type', 'folder')}:{location['path']} lists {count} files"
