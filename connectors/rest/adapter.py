"""REST/JSON adapter for RCM and ERP APIs: one configured operation per kind of effect.

Inbound connectors are pushed to at ``POST /api/v1/inbound/<code>/`` (views.py; settings in inbound.py).

Outbound config::

    {
      "base_url": "https://rcm.example.org/api",
      "operations": {"submit_claim": {"method": "POST", "path": "/claims", "result_field": "claim_id"}},
      "idempotency_header": "Idempotency-Key",                      # optional, this is the default
      "auth": {"type": "api_key", "header": "X-Api-Key"}              # or basic / oauth2: see auth.py
      "headers": {"X-Tenant": "north"},                              # optional extra headers
      "health_path": "/health"                                       # optional, for "test connection"
    }

The delivery's payload is the JSON body and its idempotency key goes in the idempotency header. Answers:
2xx → success (external id = response[result_field], dots for nested fields); 409 naming the existing result → success, because that
is the destination's own duplicate check saying the effect already exists; other 4xx except 408/429 →
permanent error with the problem text; 408, 429, 5xx, connection errors and timeouts → transient.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx

from connectors.inbound_auth import SECRET_NAME, key_header_for
from connectors.json_message import JsonMessage
from connectors.json_message import parse as parse_json
from connectors.rest.auth import request as auth_request
from connectors.rest.auth import validate_auth
from connectors.rest.inbound import validate_inbound_config
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult
from healthsync.secrets import SecretsUnreadable

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery

METHODS = {"POST", "PUT", "PATCH"}
TRANSIENT_4XX = {408, 425, 429}


class RestAdapter:
    protocol = Protocol.REST

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        errors: list[str] = []
        base_url = config.get("base_url")
        parsed = urlparse(base_url) if isinstance(base_url, str) else None
        # Inbound connectors are called, not calling: a base URL is only for "test connection" there.
        needs_url = direction != Direction.INBOUND or base_url not in (None, "")
        if needs_url and (parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc):
            errors.append("base_url must be an http:// or https:// URL")
        if direction == Direction.INBOUND:
            errors += validate_inbound_config(config)
        if direction == Direction.OUTBOUND:
            operations = config.get("operations")
            if not isinstance(operations, dict) or not operations:
                errors.append("operations must map operation names to {method, path, result_field}")
            else:
                for name, spec in operations.items():
                    if not isinstance(spec, dict):
                        errors.append(
                            f"operation {name}: must be an object with method, path and result_field"
                        )
                        continue
                    if str(spec.get("method", "")).upper() not in METHODS:
                        errors.append(f"operation {name}: method must be one of {', '.join(sorted(METHODS))}")
                    if not isinstance(spec.get("path"), str) or not spec["path"].startswith("/"):
                        errors.append(f"operation {name}: path must start with /")
                    if not isinstance(spec.get("result_field"), str) or not spec["result_field"]:
                        errors.append(f"operation {name}: result_field must name the id field of the reply")
        errors += validate_auth(config.get("auth"))
        health_path = config.get("health_path")
        if health_path is not None and (not isinstance(health_path, str) or not health_path.startswith("/")):
            errors.append("health_path must start with /")
        header = config.get("idempotency_header", "Idempotency-Key")
        if not isinstance(header, str) or not header:
            errors.append("idempotency_header must be a header name")
        return errors

    def parse(self, raw: bytes) -> JsonMessage:
        """An inbound JSON body, read with the mapping engine's JSON paths (type → message type, id → control
        id); a body that is not a JSON object raises JsonParseError naming why (the raw bytes stay stored)."""
        return parse_json(raw)

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        config = connector.config or {}
        operation = (config.get("operations") or {}).get(delivery.operation)
        if not isinstance(operation, dict):
            raise ConnectorError(
                f"Connector {connector.code} has no operation {delivery.operation!r}", permanent=True
            )
        url = str(config.get("base_url", "")).rstrip("/") + str(operation.get("path", ""))
        headers = {
            "Accept": "application/json",
            str(config.get("idempotency_header") or "Idempotency-Key"): delivery.idempotency_key,
            **{str(k): str(v) for k, v in (config.get("headers") or {}).items()},
        }
        response = auth_request(
            connector,
            str(operation.get("method", "POST")).upper(),
            url,
            json=delivery.payload,
            headers=headers,
        )
        body = _json(response)
        result_field = str(operation.get("result_field", ""))
        if response.is_success:
            return SendResult(response=body, external_id=_field(body, result_field))
        if response.status_code == 409 and _field(body, result_field):
            return SendResult(response=body, external_id=_field(body, result_field))
        problem = _problem_text(body, response)
        if 400 <= response.status_code < 500 and response.status_code not in TRANSIENT_4XX:
            raise ConnectorError(problem, permanent=True, response=body)
        raise ConnectorError(problem, permanent=False, response=body)

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """One authenticated GET to config.health_path (or the base URL): any answer below 500 except
        401/403 means the system is there and takes our credentials. An inbound connector without a base
        URL has nothing to call: the answer says where callers post and how they authenticate."""
        if connector.direction == Direction.INBOUND and not (connector.config or {}).get("base_url"):
            return inbound_readiness(connector)
        return probe(connector, str((connector.config or {}).get("health_path") or ""))


def inbound_readiness(connector: Connector) -> tuple[bool, str]:
    """Whether callers can deliver to this inbound connector, and where, for the console."""
    from django.urls import reverse

    path = reverse("rest_inbound", kwargs={"code": connector.code})
    if not connector.is_enabled:
        return False, f"The connector is disabled: POST {path} answers 404 until it is enabled"
    try:
        has_key = bool(connector.secrets.get(SECRET_NAME))
    except SecretsUnreadable:
        return False, f"The {SECRET_NAME} secret cannot be decrypted with the configured key"
    if not has_key:
        return True, f"Callers POST JSON to {path} with a DRF token (no {SECRET_NAME} is set)"
    return True, f"Callers POST JSON to {path} with a DRF token or the {key_header_for(connector)} header"


def probe(connector: Connector, path: str) -> tuple[bool, str]:
    """GET base_url + path with the connector's auth; (ok, what happened) for the console."""
    url = str((connector.config or {}).get("base_url", "")).rstrip("/") + path
    try:
        response = auth_request(connector, "GET", url, headers={"Accept": "application/json"})
    except ConnectorError as exc:
        return False, exc.message
    if response.status_code in (401, 403):
        return False, f"HTTP {response.status_code} from {url}: the credentials were refused"
    if response.status_code >= 500:
        return False, f"HTTP {response.status_code} from {url}"
    return True, f"HTTP {response.status_code} from {url}"


def _field(body: dict[str, Any], path: str) -> str:
    """The reply's id field; dots reach into nested objects (``data.claim.id``)."""
    value: Any = body
    for part in path.split(".") if path else []:
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None or isinstance(value, dict | list) else str(value)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"text": response.text[:2000]} if response.text else {}
    return body if isinstance(body, dict) else {"data": body}


def _problem_text(body: dict[str, Any], response: httpx.Response) -> str:
    """The destination's own words (RFC 9457 problem detail or a plain error), prefixed with the status."""
    parts = [str(body[key]) for key in ("title", "detail") if body.get(key)]
    if not parts:
        parts = [str(body.get("error") or body.get("message") or body.get("text") or response.reason_phrase)]
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        parts.append("; ".join(str(error) for error in errors[:10]))
    return f"HTTP {response.status_code}: " + ": ".join(parts)
