"""HL7 v2 adapter: parses with the fast reader, sends over MLLP (sender.py).

Outbound config::

    {
      "host": "lab.example.org", "port": 2575,
      "operations": {"send_adt": {}},            # what deliveries may ask this connector for
      "ack_timeout_seconds": 30,                  # optional, default the connector's timeout
      "tls": true, "tls_ca_file": "...",          # optional; tls_cert_file/tls_key_file for mutual TLS
    }

A delivery's payload carries the message as text under "hl7" (segments ended by CR, LF or CRLF). Its MSH-10
is set from the delivery's idempotency key, so every attempt of one delivery has the same control id.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from connectors.hl7v2.reader import _CHARSETS, HL7Message, parse
from connectors.hl7v2.sender import (
    SenderConfig,
    client_tls_context,
    control_id_for,
    sender_for,
    validate_sender_config,
    with_control_id,
)
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
        else:
            errors += validate_sender_config(config)
        return errors

    def parse(self, raw: bytes) -> HL7Message:
        return parse(raw)

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        text = (delivery.payload or {}).get("hl7")
        if not isinstance(text, str) or not text.strip():
            raise ConnectorError(
                f"Delivery {delivery.pk} has no HL7 v2 message under payload['hl7']", permanent=True
            )
        config = _sender_config(connector)
        control_id = control_id_for(delivery.idempotency_key)
        message = with_control_id(text, control_id)
        charset = parse(message).header.charset.strip().upper()
        ack = sender_for(config).send(
            message, control_id=control_id, encoding=_CHARSETS.get(charset, "utf-8")
        )
        return SendResult(response=ack.as_response(), external_id=control_id)

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """Open a connection (and the TLS handshake when configured) without sending a message."""
        config = _sender_config(connector)
        where = f"{config.host}:{config.port}"
        try:
            sock = socket.create_connection((config.host, config.port), timeout=config.connect_timeout)
        except OSError as exc:
            return False, f"Cannot connect to {where}: {exc.strerror or exc}"
        try:
            context = client_tls_context(config)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=config.tls_server_name or config.host)
                return True, f"Connected to {where} over {sock.version()}"
        except OSError as exc:
            return False, f"TLS handshake with {where} failed: {exc}"
        finally:
            sock.close()
        return True, f"Connected to {where} (MLLP, no TLS)"


def _sender_config(connector: Connector) -> SenderConfig:
    config = connector.config or {}
    if connector.direction != Direction.OUTBOUND or validate_sender_config(config):
        raise ConnectorError(
            f"Connector {connector.code} is not a valid outbound HL7 v2 connector: "
            + "; ".join(validate_sender_config(config) or ["it is not outbound"]),
            permanent=True,
        )
    return SenderConfig.from_connector_config(config, timeout=float(connector.timeout_seconds or 30))
