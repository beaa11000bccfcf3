"""Polling a reporting table by a high-water mark: each new row becomes one inbound Message.

Inbound connector config (protocol database; the DSN is the secret ``dsn``)::

    {
      "table": "reporting.adt_events",         # or "query": "SELECT ... FROM ..." (wrapped as a subquery)
      "columns": ["id", "mrn", "event", "updated_at"],   # optional: every column when absent
      "mark_column": "updated_at",             # increases with every new or changed row (id, updated_at)
      "tiebreak_column": "id",                 # optional: orders rows sharing one mark value
      "batch_size": 500,                       # rows per query; a poll reads up to max_batches of them
      "max_batches": 20,
      "message_type": "adt_event"
    }

Rows are read ``WHERE mark > :mark OR (mark = :mark AND tiebreak > :tiebreak) ORDER BY mark, tiebreak``.
A row is stored as a JSON object (raw) with control id = its (mark, tiebreak) values, so reading a row
version twice makes a duplicate, never a second message, and a row changed later (a new updated_at) is new.

The high-water mark is not kept anywhere else: it is the control id of the newest message this poller
committed for the connector. It can therefore only advance once the rows are committed, and a crash between
the read and the commit re-reads the same rows on the next poll.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from connectors.database.source import Source, open_source, quote, validate_identifier
from healthsync.choices import Direction, MessageStatus, Protocol
from healthsync.errors import ConnectorError
from healthsync.ingest import InboundItem, store_messages
from healthsync.secrets import SecretsUnreadable

if TYPE_CHECKING:
    from healthsync.models import Connector

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 500
DEFAULT_MAX_BATCHES = 20
# The control id column holds 200 characters; a mark that does not fit cannot be kept.
_CONTROL_MAX = 200


@dataclass
class PollReport:
    """What one poll did: message ids stored, duplicates seen, and the mark it ended on."""

    stored: list[int] = field(default_factory=list)
    duplicates: int = 0
    mark: list[Any] | None = None


def validate_source_config(config: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    table, query = config.get("table"), config.get("query")
    if bool(table) == bool(query):
        errors.append("give either table (a table or view name) or query (one SELECT), not both")
    elif table:
        errors += validate_identifier(table, "table", dotted=True)
    elif not isinstance(query, str) or not query.lstrip().lower().startswith(("select", "with")):
        errors.append("query must be one SELECT statement")
    elif ";" in query.rstrip().rstrip(";"):
        errors.append("query must be one statement (no ;)")
    errors += validate_identifier(config.get("mark_column"), "mark_column")
    if config.get("tiebreak_column"):
        errors += validate_identifier(config["tiebreak_column"], "tiebreak_column")
    columns = config.get("columns")
    if columns is not None:
        if not isinstance(columns, list) or not columns:
            errors.append("columns must be a list of column names (or left out for every column)")
        else:
            for column in columns:
                errors += validate_identifier(column, "each of columns")
    for name, default, top in (
        ("batch_size", DEFAULT_BATCH, 10_000),
        ("max_batches", DEFAULT_MAX_BATCHES, 1000),
    ):
        value = config.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            errors.append(f"{name} must be a whole number from 1 to {top}")
    return errors


def build_query(config: dict[str, Any], placeholder: str, mark: list[Any] | None) -> tuple[str, list[Any]]:
    """The SELECT for the next batch after `mark` ([mark] or [mark, tiebreak]; None for the first poll)."""
    mark_col = quote(config["mark_column"])
    tie = config.get("tiebreak_column")
    tie_col = quote(tie) if tie else ""
    columns = config.get("columns")
    if columns:
        wanted = list(dict.fromkeys([*columns, config["mark_column"], *([tie] if tie else [])]))
        select = ", ".join(quote(c) for c in wanted)
    else:
        select = "*"
    if config.get("table"):
        source = quote(config["table"])
    else:
        body = str(config["query"]).strip().rstrip(";")
        if placeholder == "%s":
            body = body.replace("%", "%%")  # psycopg reads % as a placeholder once parameters are passed
        source = f"({body}) AS healthsync_src"
    p = placeholder
    params: list[Any] = []
    if mark is None:
        where = f"{mark_col} IS NOT NULL"
    elif tie and len(mark) == 2:
        where = f"({mark_col} > {p} OR ({mark_col} = {p} AND {tie_col} > {p}))"
        params = [mark[0], mark[0], mark[1]]
    else:
        where = f"{mark_col} > {p}"
        params = [mark[0]]
    order = f"{mark_col}, {tie_col}" if tie else mark_col
    limit = int(config.get("batch_size", DEFAULT_BATCH))
    # Names are checked identifiers, quoted; values are parameters.
    sql = f"SELECT {select} FROM {source} WHERE {where} ORDER BY {order} LIMIT {limit}"  # noqa: S608
    return sql, params


# Mark values keep their type through the control id, so the next query compares like with like.
def encode_value(value: Any) -> str:
    if isinstance(value, bool):
        return f"b:{int(value)}"
    if isinstance(value, int):
        return f"i:{value}"
    if isinstance(value, Decimal):
        return f"n:{value}"
    if isinstance(value, datetime):
        return f"t:{value.isoformat()}"
    if isinstance(value, date):
        return f"d:{value.isoformat()}"
    if isinstance(value, float):
        return f"f:{value!r}"
    if isinstance(value, uuid.UUID):
        return f"u:{value}"
    return f"s:{value}"


def decode_value(text: str) -> Any:
    tag, _, body = text.partition(":")
    decoders: dict[str, Any] = {
        "b": lambda v: bool(int(v)),
        "i": int,
        "n": Decimal,
        "t": datetime.fromisoformat,
        "d": date.fromisoformat,
        "f": float,
        "u": uuid.UUID,
        "s": str,
    }
    if tag not in decoders:
        raise ValueError(f"unknown mark type {tag!r}")
    return decoders[tag](body)


def control_id_for(values: list[Any]) -> str:
    text = json.dumps([encode_value(v) for v in values], separators=(",", ":"))
    if len(text) > _CONTROL_MAX:
        raise ConnectorError(
            f"The mark value is longer than {_CONTROL_MAX} characters: choose a shorter mark column",
            permanent=True,
        )
    return text


def sender_for(connector: Connector) -> str:
    return f"db:{connector.code}"


def stored_mark(connector: Connector) -> list[Any] | None:
    """The (mark, tiebreak) of the newest row committed for the connector; None before the first row."""
    from healthsync.models import Message

    # First copies only: duplicates and replays carry no dedupe key and may hold an older mark.
    control_id = (
        Message.objects.filter(connector=connector, sender=sender_for(connector), dedupe_key__isnull=False)
        .order_by("-id")
        .values_list("control_id", flat=True)
        .first()
    )
    if not control_id:
        return None
    try:
        return [decode_value(v) for v in json.loads(control_id)]
    except (ValueError, TypeError):
        raise ConnectorError(
            f"The stored mark {control_id!r} cannot be read back; was the mark column changed?",
            permanent=True,
        ) from None


def row_json(columns: list[str], row: tuple[Any, ...]) -> bytes:
    return json.dumps(
        dict(zip(columns, row, strict=True)), default=_json_value, separators=(",", ":")
    ).encode()


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return str(value)


def connector_dsn(connector: Connector) -> str:
    try:
        dsn = connector.secrets.get("dsn") or ""
    except SecretsUnreadable as exc:
        raise ConnectorError(f"{connector.code}: {exc}", permanent=True) from None
    if not dsn:
        raise ConnectorError(f"{connector.code}: no dsn is set (a connector secret)", permanent=True)
    return dsn


def poll_connector(connector: Connector) -> PollReport:
    """Read and store every row after the stored mark, a batch at a time (up to max_batches)."""
    config = connector.config or {}
    problems = validate_source_config(config)
    if problems:
        raise ConnectorError(f"{connector.code}: {problems[0]}", permanent=True)
    report = PollReport(mark=stored_mark(connector))
    with open_source(connector_dsn(connector), timeout=connector.timeout_seconds) as source:
        for _ in range(int(config.get("max_batches", DEFAULT_MAX_BATCHES))):
            count = _poll_batch(connector, source, config, report)
            if count < int(config.get("batch_size", DEFAULT_BATCH)):
                break
    if report.stored or report.duplicates:
        logger.info(
            "database poll %s: %d stored, %d duplicates",
            connector.code,
            len(report.stored),
            report.duplicates,
        )
    return report


def _poll_batch(connector: Connector, source: Source, config: dict[str, Any], report: PollReport) -> int:
    sql, params = build_query(config, source.placeholder, report.mark)
    columns, rows = source.fetch(sql, params)
    if not rows:
        return 0
    mark_at = columns.index(config["mark_column"])
    tie = config.get("tiebreak_column")
    tie_at = columns.index(tie) if tie else None
    items = []
    last: list[Any] = []
    for row in rows:
        last = [row[mark_at]] + ([row[tie_at]] if tie_at is not None else [])
        items.append(
            InboundItem(
                connector_id=connector.pk,
                raw=row_json(columns, row),
                sender=sender_for(connector),
                control_id=control_id_for(last),
                message_type=str(config.get("message_type") or ""),
                lane=connector.lane,
            )
        )
    # store_messages commits; only a committed row moves the mark (it is read back from the store).
    for outcome in store_messages(items):
        if outcome.status == MessageStatus.DUPLICATE:
            report.duplicates += 1
        else:
            report.stored.append(outcome.message_id)
    report.mark = last
    return len(rows)


def poll_all(*, codes: list[str] | None = None) -> int:
    """Poll every enabled inbound database connector (the django-q2 schedule calls this); rows stored."""
    from healthsync.models import Connector

    connectors = Connector.objects.filter(
        direction=Direction.INBOUND, protocol=Protocol.DATABASE, is_enabled=True
    )
    if codes:
        connectors = connectors.filter(code__in=codes)
    stored = 0
    for connector in connectors:
        try:
            stored += len(poll_connector(connector).stored)
        except ConnectorError as exc:
            # One unreachable database must not stop the others; the next run starts from the stored mark.
            logger.warning("database poll %s failed: %s", connector.code, exc.message)
    return stored
