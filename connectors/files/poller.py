"""Picking files up from a folder or SFTP: ready check, store as a Message, archive or error with a reason.

Inbound connector config (protocol file, or x12 for payer answers dropped as files)::

    {
      "source": {"type": "folder", "path": "/data/payroll"},     # or an sftp location (transport.py);
                                                                 # its password/key are connector secrets
      "pattern": "*.csv",
      "ready": "stable",          # stable: size and mtime equal across two looks settle_seconds apart
                                  # done_marker: NAME is ready once NAME.done exists (the marker is archived too)
                                  # temp_name: anything not starting with "." or ending .part/.tmp is complete
      "settle_seconds": 2,
      "archive_dir": "archive",   # relative to source.path; created when missing
      "error_dir": "error",
      "message_type": "payroll_allocation",
      "layout": {...},            # file protocol: the declared layout (layout.py); x12: none, the envelope is checked
      "split": "file"             # or "rows": one Message per record (CSV rows carry the header line);
                                  # a file with one bad record is still rejected whole
    }

Each file is one Message (raw = the file's bytes, control id = name + content hash, so the same file dropped
twice is a duplicate and a new file under an old name is not), or with split=rows one Message per record
(control id = name + hash + record number). A file that does not read (layout, encoding,
X12 envelope) is stored as a rejected Message with the reason, so the raw bytes are kept, and moved to the
error folder next to `<name>.reason.txt`. Stored files move to the archive folder.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connectors.files.layout import FileFormatError, read_records, split_rows, validate_layout
from connectors.files.transport import Entry, connector_secrets, open_transport, validate_location
from healthsync.choices import MessageStatus, Protocol
from healthsync.ingest import InboundItem, store_messages

if TYPE_CHECKING:
    from healthsync.models import Connector

logger = logging.getLogger(__name__)

READY_MODES = ("stable", "done_marker", "temp_name")
DONE_SUFFIX = ".done"


@dataclass
class PollReport:
    """What one poll did: message ids stored, files moved to error (name, reason), files left for later."""

    stored: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


def validate_source_config(config: dict[str, Any], protocol: str) -> list[str]:
    errors = [f"source.{e}" for e in validate_location(config.get("source"))]
    if config.get("ready", "stable") not in READY_MODES:
        errors.append(f"ready must be one of {', '.join(READY_MODES)}")
    settle = config.get("settle_seconds", 2)
    if not isinstance(settle, int | float) or settle < 0:
        errors.append("settle_seconds must be a number of seconds")
    if not isinstance(config.get("pattern", "*"), str):
        errors.append("pattern must be a file name pattern such as *.csv")
    if protocol == Protocol.FILE:
        errors += validate_layout(config.get("layout"))
    if config.get("split", "file") not in ("file", "rows"):
        errors.append("split must be file (one message per file) or rows (one per record)")
    return errors


def poll_connector(
    connector: Connector, *, sleep: Callable[[float], None] = time.sleep, limit: int = 100
) -> PollReport:
    """One pass over the connector's source; `sleep` waits between the two looks of the stable check."""
    config = connector.config or {}
    report = PollReport()
    with open_transport(
        config["source"], timeout=connector.timeout_seconds, secrets=connector_secrets(connector)
    ) as transport:
        for sub in (config.get("archive_dir", "archive"), config.get("error_dir", "error")):
            transport.makedirs(sub)
        ready = _ready_files(transport, config, sleep, report)
        for entry in ready[:limit]:
            _take(connector, transport, config, entry, report)
    if report.stored or report.failed:
        logger.info(
            "poll %s: %d stored, %d to error, %d waiting",
            connector.code,
            len(report.stored),
            len(report.failed),
            len(report.waiting),
        )
    return report


def _ready_files(
    transport: Any, config: dict[str, Any], sleep: Callable[[float], None], report: PollReport
) -> list[Entry]:
    pattern = str(config.get("pattern", "*"))
    mode = config.get("ready", "stable")
    entries = transport.list("")
    names = {e.name for e in entries}
    candidates = [
        e
        for e in entries
        if fnmatch.fnmatch(e.name, pattern)
        and not e.name.startswith(".")
        and not e.name.endswith(DONE_SUFFIX)
    ]
    if mode == "temp_name":
        ready = [e for e in candidates if not e.name.endswith((".part", ".tmp"))]
    elif mode == "done_marker":
        ready = [e for e in candidates if e.name + DONE_SUFFIX in names]
    else:
        sleep(float(config.get("settle_seconds", 2)))
        again = {e.name: e for e in transport.list("")}
        # A file still being written changes size or mtime between the looks: leave it for the next poll.
        ready = [
            e
            for e in candidates
            if e.name in again and (again[e.name].size, again[e.name].mtime) == (e.size, e.mtime)
        ]
    ready_names = {e.name for e in ready}
    report.waiting = [e.name for e in candidates if e.name not in ready_names]
    return ready


def _take(
    connector: Connector, transport: Any, config: dict[str, Any], entry: Entry, report: PollReport
) -> None:
    raw = transport.read(entry.name)
    digest = hashlib.sha256(raw).hexdigest()
    error = check_file(raw, connector.protocol, config)
    message_type = str(config.get("message_type") or _x12_type(raw, connector.protocol))
    payloads = [raw]
    if not error and config.get("split") == "rows" and connector.protocol == Protocol.FILE:
        payloads = split_rows(raw, config["layout"])
    items = [
        InboundItem(
            connector_id=connector.pk,
            raw=payload,
            sender=f"file:{connector.code}",
            control_id=f"{entry.name}:{digest[:16]}" + (f":{number}" if len(payloads) > 1 else ""),
            message_type=message_type,
            lane=connector.lane,
            status=MessageStatus.REJECTED if error else MessageStatus.RECEIVED,
            error=error,
        )
        for number, payload in enumerate(payloads, start=1)
    ]
    outcomes = store_messages(items)
    outcome = outcomes[0]
    # The bytes are committed; only now may the file leave the pick-up folder.
    # The content hash keeps two drops of one name within a second from overwriting each other's archive.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{digest[:8]}"
    done = entry.name + DONE_SUFFIX
    has_marker = config.get("ready") == "done_marker" and transport.exists(done)
    if error:
        folder = str(config.get("error_dir", "error"))
        transport.rename(entry.name, f"{folder}/{stamp}-{entry.name}")
        transport.write(
            f"{folder}/{stamp}-{entry.name}.reason.txt",
            f"{error}\nmessage #{outcome.message_id}\n".encode(),
        )
        report.failed.append((entry.name, error))
    else:
        folder = str(config.get("archive_dir", "archive"))
        transport.rename(entry.name, f"{folder}/{stamp}-{entry.name}")
        report.stored.extend(o.message_id for o in outcomes)
    if has_marker:
        transport.rename(done, f"{folder}/{stamp}-{done}")


def check_file(raw: bytes, protocol: str, config: dict[str, Any]) -> str:
    """Why the file cannot be taken ("" when it can): its layout, or its X12 envelope."""
    if protocol == Protocol.X12:
        from connectors.x12.reader import X12ParseError, parse

        try:
            parse(raw)
        except X12ParseError as exc:
            where = f" (segment {exc.position})" if exc.position else ""
            return f"X12 {exc.segment}{where}: {exc.message}"
        return ""
    try:
        read_records(raw, config.get("layout") or {})
    except FileFormatError as exc:
        return exc.message
    except (KeyError, TypeError) as exc:
        return f"The connector's layout is incomplete: {exc}"
    return ""


def _x12_type(raw: bytes, protocol: str) -> str:
    if protocol != Protocol.X12:
        return ""
    from connectors.x12.reader import X12ParseError, parse

    try:
        return parse(raw).header.message_type
    except X12ParseError:
        return ""


def poll_all(*, codes: list[str] | None = None) -> int:
    """Poll every enabled inbound files/X12 connector with a source (the django-q2 schedule calls this)."""
    from healthsync.choices import Direction
    from healthsync.errors import ConnectorError
    from healthsync.models import Connector

    connectors = Connector.objects.filter(
        direction=Direction.INBOUND, protocol__in=[Protocol.FILE, Protocol.X12], is_enabled=True
    )
    if codes:
        connectors = connectors.filter(code__in=codes)
    stored = 0
    for connector in connectors:
        if not isinstance((connector.config or {}).get("source"), dict):
            continue
        try:
            stored += len(poll_connector(connector).stored)
        except ConnectorError as exc:
            # One unreachable drop must not stop the others; the next schedule tries again.
            logger.warning("poll %s failed: %s", connector.code, exc.message)
    return stored
