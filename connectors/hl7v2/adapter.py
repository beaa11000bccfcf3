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
import ssl
from typing import TYPE_CHECKING, Any

from connectors.hl7v2.reader import _CHARSETS, HL7Message, HL7ParseError, parse
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
        try:
            charset = parse(message).header.charset.strip().upper()
        except HL7ParseError as exc:
            raise ConnectorError(f"The HL7 v2 payload cannot be read: {exc.message}", permanent=True) from exc
        ack = sender_for(config).send(
            message, control_id=control_id, encoding=_CHARSETS.get(charset, "utf-8")
        )
        return SendResult(response=ack.as_response(), external_id=control_id)

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """Inbound: is the listener's port open. Outbound: open a connection to the receiver (and the TLS
        handshake when configured) without sending a message."""
        config = connector.config or {}
        if connector.direction == Direction.INBOUND:
            port = config.get("port")
            if not isinstance(port, int):
                return False, "The connector names no port to listen on"
            host = str(config.get("host") or "127.0.0.1")
            return _probe(host, port, None, "", timeout=2.0, what="the MLLP listener")
        sender = _sender_config(connector)
        return _probe(
            sender.host,
            sender.port,
            client_tls_context(sender),
            sender.tls_server_name or sender.host,
            timeout=sender.connect_timeout,
            what="the receiver",
        )


def _probe(
    host: str, port: int, context: ssl.SSLContext | None, server_name: str, *, timeout: float, what: str
) -> tuple[bool, str]:
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return False, f"{what.capitalize()} at {where} does not accept connections ({exc.strerror or exc})"
    try:
        if context is None:
            return True, f"{what.capitalize()} at {where} accepts connections (MLLP, no TLS)"
        sock = context.wrap_socket(sock, server_hostname=server_name)
        return True, f"{what.capitalize()} at {where} accepts connections over {sock.version()}"
    except OSError as exc:
        return False, f"TLS handshake with {what} at {where} failed: {exc}"
    finally:
        sock.close()


def _sender_config(connector: Connector) -> SenderConfig:
    config = connector.config or {}
    if connector.direction != Direction.OUTBOUND or validate_sender_config(config):
        raise ConnectorError(
            f"Connector {connector.code} is not a valid outbound HL7 v2 connector: "
            + "; ".join(validate_sender_config(config) or ["it is not outbound"]),
            permanent=True,
        )
    return SenderConfig.from_connector_config(config, timeout=float(connector.timeout_seconds or 30))
