"""HL7 v2 adapter: parses with the fast reader; MLLP sending comes with the connectors issue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connectors.hl7v2.reader import HL7Message, parse
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery


class HL7v2Adapter:
    protocol = Protocol.HL7V2

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        errors: list[str] = []
        if direction == Direction.INBOUND:
            port = config.get("port")
            if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
                errors.append("port must be an integer between 1 and 65535")
            types = config.get("accepted_types", [])
            if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
                errors.append("accepted_types must be a list of message types such as ADT^A03")
        return errors

    def parse(self, raw: bytes) -> HL7Message:
        return parse(raw)

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        raise ConnectorError("Outbound HL7 v2 over MLLP is not available yet", permanent=True)
