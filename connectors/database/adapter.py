"""Database events adapter: inbound only; rows polled by poller.py arrive as JSON objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connectors import json_message
from connectors.database.poller import build_query, connector_dsn, validate_source_config
from connectors.database.source import open_source
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery


class DatabaseAdapter:
    protocol = Protocol.DATABASE

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        if direction != Direction.INBOUND:
            return ["database connectors are inbound only (they poll a reporting database)"]
        return validate_source_config(config)

    def parse(self, raw: bytes) -> json_message.JsonMessage:
        return json_message.parse(raw)

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        raise ConnectorError("A database connector only reads; it cannot deliver", permanent=True)

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """Connect read-only and run the first batch's query with LIMIT 1 semantics (nothing is stored)."""
        config = dict(connector.config or {})
        problems = validate_source_config(config)
        if problems:
            return False, problems[0]
        config["batch_size"] = 1
        try:
            with open_source(connector_dsn(connector), timeout=connector.timeout_seconds) as source:
                sql, params = build_query(config, source.placeholder, None)
                columns, _rows = source.fetch(sql, params)
        except ConnectorError as exc:
            return False, exc.message
        return True, f"{source.label} answers; the query returns {len(columns)} columns"
