"""FHIR R4 adapter: inbound resources are read with FhirPathReader; outbound ones are written idempotently.

Inbound config (the HTTP endpoint ``POST /fhir/<code>/<Type>``, or polling a server)::

    {"api_key_header": "X-Api-Key",                     # optional; the key itself is the secret inbound_api_key
     "accepted_types": ["Encounter", "Bundle"],         # optional; default every supported type and Bundle
     "base_url": "https://fhir.example.org/r4",         # polling only, with "poll" and optional "auth"
     "poll": {"resource_types": ["Encounter"], "page_size": 50}}

Outbound config::

    {"base_url": "https://fhir.example.org/r4",
     "auth": {"type": "oauth2", ...},                   # see connectors/rest/auth.py
     "operations": {"create_claim": {"mode": "create", "identifier_system": "urn:healthsync:claim"}},
     "health_path": "/metadata"}                        # optional, the default

A delivery's payload is the resource. ``create`` is a conditional create (If-None-Exist on the identifier of
`identifier_system`, else the first one; a resource without one gets the delivery's idempotency key as an
identifier), so a retry returns the existing resource instead of a copy. ``update`` PUTs the resource at its
id. Operations named ``create`` and ``update`` work without configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from connectors.fhir import client
from connectors.fhir.paths import FhirPathReader
from connectors.fhir.resources import SUPPORTED_TYPES, check_resource, load_json
from connectors.rest.adapter import probe
from connectors.rest.auth import validate_auth
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery

IDEMPOTENCY_SYSTEM = "urn:healthsync:idempotency-key"
MODES = ("create", "update")


class FhirHeader:
    """What the pipeline reads from a parsed message's header: its type and control id."""

    def __init__(self, message_type: str, control_id: str) -> None:
        self.message_type = message_type
        self.control_id = control_id
        self.sender = ""


class FhirMessage(FhirPathReader):
    """A parsed FHIR resource or transaction Bundle, readable with simple paths (see paths.py)."""

    @property
    def header(self) -> FhirHeader:
        from connectors.fhir.resources import message_type_for

        return FhirHeader(message_type_for(self.resource), str(self.resource.get("id") or ""))


def _url_errors(config: dict[str, Any], required: bool) -> list[str]:
    base_url = config.get("base_url")
    if base_url is None and not required:
        return []
    parsed = urlparse(base_url) if isinstance(base_url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        return ["base_url must be an http:// or https:// URL"]
    return []


class FhirAdapter:
    protocol = Protocol.FHIR

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        errors: list[str] = []
        errors += validate_auth(config.get("auth"))
        if direction == Direction.INBOUND:
            header = config.get("api_key_header", "X-Api-Key")
            if not isinstance(header, str) or not header.strip():
                errors.append("api_key_header must be a header name")
            accepted = config.get("accepted_types")
            allowed = (*SUPPORTED_TYPES, "Bundle")
            if accepted is not None and (
                not isinstance(accepted, list) or not all(t in allowed for t in accepted)
            ):
                errors.append(f"accepted_types must list some of {', '.join(allowed)}")
            poll = config.get("poll")
            errors += _url_errors(config, required=poll is not None)
            if poll is not None:
                types = poll.get("resource_types") if isinstance(poll, dict) else None
                if not isinstance(types, list) or not types or not all(t in SUPPORTED_TYPES for t in types):
                    errors.append(f"poll.resource_types must list some of {', '.join(SUPPORTED_TYPES)}")
                size = poll.get("page_size", 50) if isinstance(poll, dict) else 50
                if not isinstance(size, int) or not 1 <= size <= 1000:
                    errors.append("poll.page_size must be an integer from 1 to 1000")
            return errors
        errors += _url_errors(config, required=True)
        operations = config.get("operations", {})
        if not isinstance(operations, dict):
            errors.append("operations must map operation names to {mode, identifier_system}")
        else:
            for name, spec in operations.items():
                if not isinstance(spec, dict) or spec.get("mode", "create") not in MODES:
                    errors.append(f"operation {name}: mode must be create or update")
        health = config.get("health_path")
        if health is not None and (not isinstance(health, str) or not health.startswith("/")):
            errors.append("health_path must start with /")
        return errors

    def parse(self, raw: bytes) -> FhirMessage:
        """The resource as a path reader; raises FhirInputError (with .message) when it is not valid FHIR."""
        checked = check_resource(load_json(raw))
        return FhirMessage(checked.data)

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        resource = delivery.payload if isinstance(delivery.payload, dict) else {}
        operations = (connector.config or {}).get("operations") or {}
        spec = operations.get(delivery.operation)
        if spec is None and delivery.operation in MODES:
            spec = {"mode": delivery.operation}
        if not isinstance(spec, dict):
            raise ConnectorError(
                f"Connector {connector.code} has no operation {delivery.operation!r}", permanent=True
            )
        if spec.get("mode", "create") == "update":
            reply = client.update(connector, resource)
        else:
            system = str(spec.get("identifier_system") or "")
            condition = client.identifier_condition(resource, system)
            if not condition:
                resource = {
                    **resource,
                    "identifier": [
                        *(resource.get("identifier") or []),
                        {"system": IDEMPOTENCY_SYSTEM, "value": delivery.idempotency_key},
                    ],
                }
                condition = client.identifier_condition(resource, IDEMPOTENCY_SYSTEM)
            reply = client.create(connector, resource, if_none_exist=condition)
        return SendResult(response=reply.resource, external_id=reply.resource_id)

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """Outbound or polling: GET [base]/metadata (or health_path). The HTTP endpoint: it is served here."""
        config = connector.config or {}
        if config.get("base_url"):
            return probe(connector, str(config.get("health_path") or "/metadata"))
        return (
            True,
            f"Served by HealthSync at /fhir/{connector.code}/ (POST a resource or a transaction Bundle)",
        )
