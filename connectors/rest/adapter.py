"""REST/JSON adapter for ERP and RCM APIs (placeholder until the delivery work lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from healthsync.choices import Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery


class RestAdapter:
    protocol = Protocol.REST

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        return [] if config.get("base_url") else ["base_url is required"]

    def parse(self, raw: bytes) -> Any:
        raise ConnectorError("Inbound REST is not available yet", permanent=True)

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        raise ConnectorError("not implemented", permanent=True)
