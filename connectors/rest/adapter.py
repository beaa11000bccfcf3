"""REST/JSON adapter for RCM and ERP APIs: one configured operation per kind of effect.

Outbound config::

    {
      "base_url": "https://rcm.example.org/api",
      "operations": {"submit_claim": {"method": "POST", "path": "/claims", "result_field": "claim_id"}},
      "idempotency_header": "Idempotency-Key",                      # optional, this is the default
      "auth": {"type": "api_key", "header": "X-Api-Key", "value": "…"} # or {"type": "basic", "username", "password"}
      "headers": {"X-Tenant": "north"}                               # optional extra headers
    }

The delivery's payload is the JSON body and its idempotency key goes in the idempotency header. Answers:
2xx → success (external id = response[result_field]); 409 naming the existing result → success, because that
is the destination's own duplicate check saying the effect already exists; other 4xx except 408/429 →
permanent error with the problem text; 408, 429, 5xx, connection errors and timeouts → transient.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx

from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult

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
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            errors.append("base_url must be an http:// or https:// URL")
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
        auth = config.get("auth")
        if auth is not None:
            if not isinstance(auth, dict) or auth.get("type") not in ("api_key", "basic"):
                errors.append("auth.type must be api_key or basic")
            elif auth["type"] == "api_key" and not (auth.get("header") and auth.get("value")):
                errors.append("api_key auth needs header and value")
            elif auth["type"] == "basic" and not (auth.get("username") and auth.get("password")):
                errors.append("basic auth needs username and password")
        header = config.get("idempotency_header", "Idempotency-Key")
        if not isinstance(header, str) or not header:
            errors.append("idempotency_header must be a header name")
        return errors

    def parse(self, raw: bytes) -> Any:
        raise ConnectorError("Inbound REST is not available yet", permanent=True)

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
        auth: httpx.Auth | None = None
        auth_config = config.get("auth") or {}
        if auth_config.get("type") == "api_key":
            headers[str(auth_config["header"])] = str(auth_config["value"])
        elif auth_config.get("type") == "basic":
            auth = httpx.BasicAuth(str(auth_config["username"]), str(auth_config["password"]))
        try:
            response = httpx.request(
                str(operation.get("method", "POST")).upper(),
                url,
                json=delivery.payload,
                headers=headers,
                auth=auth,
                timeout=connector.timeout_seconds,
            )
        except httpx.TimeoutException:
            raise ConnectorError(
                f"{connector.code} did not answer within {connector.timeout_seconds:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise ConnectorError(f"{connector.code} is unreachable: {type(exc).__name__}") from None
        body = _json(response)
        result_field = str(operation.get("result_field", ""))
        if response.is_success:
            return SendResult(response=body, external_id=str(body.get(result_field, "") or ""))
        if response.status_code == 409 and body.get(result_field):
            return SendResult(response=body, external_id=str(body[result_field]))
        problem = _problem_text(body, response)
        if 400 <= response.status_code < 500 and response.status_code not in TRANSIENT_4XX:
            raise ConnectorError(problem, permanent=True, response=body)
        raise ConnectorError(problem, permanent=False, response=body)


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
