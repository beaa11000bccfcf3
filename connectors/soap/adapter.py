"""SOAP adapter (zeep) for ERPs that only speak SOAP, e.g. a Workday-style Submit_Accounting_Journal.

Outbound config::

    {
      "wsdl": "https://erp.example.org/ccx/service/Financial_Management?wsdl",
      "endpoint": "https://…",           # optional: overrides the WSDL's soap:address (a tenant URL)
      "operations": {
        "post_journal": {"operation": "Submit_Accounting_Journal",
                         "request": "workday_journal",     # or "passthrough": the payload is the request
                         "result_path": "Accounting_Journal_Reference.ID"}
      },
      "auth": {"type": "wsse", "username": "isu_healthsync"}   # WS-Security UsernameToken, or "basic";
    }                                                          # the password is the connector secret

The delivery's operation picks the entry in ``operations``. Answers: a reply → success (external id = the
value at result_path); a SOAP fault → permanent error with the fault text, except a duplicate-reference fault
that names the journal already posted, which is the ERP's own duplicate check saying the effect exists
(success with that id, as the REST adapter treats a 409); HTTP 5xx without a fault, 408/429, timeouts and
connection errors → transient.
"""

from __future__ import annotations

import hashlib
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import requests
import zeep
import zeep.exceptions
from zeep.helpers import serialize_object
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult
from healthsync.secrets import SecretsUnreadable

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery

AUTH_TYPES = ("basic", "wsse")
REQUEST_BUILDERS = ("workday_journal", "passthrough")
TRANSIENT_STATUS = {408, 425, 429}


def _url_error(value: Any, name: str) -> list[str]:
    parsed = urlparse(value) if isinstance(value, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        return [f"{name} must be an http:// or https:// URL"]
    return []


def validate_soap_config(direction: str, config: dict[str, Any]) -> list[str]:
    if direction != Direction.OUTBOUND:
        return ["SOAP connectors are outbound only (they call an ERP's web service)"]
    errors = _url_error(config.get("wsdl"), "wsdl")
    if config.get("endpoint"):
        errors += _url_error(config["endpoint"], "endpoint")
    operations = config.get("operations")
    if not isinstance(operations, dict) or not operations:
        errors.append("operations must map delivery operations to {operation, request, result_path}")
    else:
        for name, spec in operations.items():
            if (
                not isinstance(spec, dict)
                or not isinstance(spec.get("operation"), str)
                or not spec["operation"]
            ):
                errors.append(f"operation {name}: operation must name the SOAP operation")
                continue
            if spec.get("request", "passthrough") not in REQUEST_BUILDERS:
                errors.append(f"operation {name}: request must be one of {', '.join(REQUEST_BUILDERS)}")
            if not isinstance(spec.get("result_path", ""), str):
                errors.append(f"operation {name}: result_path must be a dotted path such as Reference.ID")
    auth = config.get("auth")
    if auth is not None:
        if not isinstance(auth, dict) or auth.get("type") not in AUTH_TYPES:
            errors.append("auth.type must be basic or wsse")
        elif not auth.get("username"):
            errors.append("auth needs a username (the password is a secret)")
    return errors


def workday_journal(payload: dict[str, Any]) -> dict[str, Any]:
    """The canonical journal payload (external_reference, journal_date, lines…) as Accounting_Journal_Data."""
    lines = payload.get("lines")
    if not isinstance(lines, list) or not payload.get("external_reference"):
        raise ConnectorError("The journal has no external_reference or no lines", permanent=True)
    return {
        "Accounting_Journal_Data": {
            "External_Reference_ID": str(payload["external_reference"]),
            "Accounting_Date": str(payload.get("journal_date") or ""),
            "Currency": str(payload.get("currency") or "USD"),
            "Journal_Entry_Memo": str(payload.get("description") or "") or None,
            "Journal_Entry_Line_Data": [
                {
                    "Ledger_Account": str(line.get("account") or ""),
                    "Cost_Center": str(line.get("cost_center") or "") or None,
                    "Debit_Amount": Decimal(str(line.get("debit") or "0")),
                    "Credit_Amount": Decimal(str(line.get("credit") or "0")),
                    "Memo": str(line.get("account_name") or "") or None,
                }
                for line in lines
                if isinstance(line, dict)
            ],
        }
    }


class _Clients:
    """zeep clients per (WSDL, endpoint, credentials): the WSDL is fetched and compiled once per process."""

    def __init__(self) -> None:
        self._clients: dict[str, tuple[zeep.Client, Any]] = {}
        self._lock = threading.Lock()

    def get(self, config: dict[str, Any], password: str, timeout: float) -> tuple[zeep.Client, Any]:
        auth = config.get("auth") or {}
        key = "|".join(
            [
                str(config["wsdl"]),
                str(config.get("endpoint") or ""),
                str(auth.get("type") or ""),
                str(auth.get("username") or ""),
                # The password takes part so that a rotated secret never reuses the old session.
                hashlib.sha256(password.encode()).hexdigest()[:16],
                f"{timeout:g}",
            ]
        )
        with self._lock:
            if key not in self._clients:
                self._clients[key] = build_client(config, password, timeout)
            return self._clients[key]

    def clear(self) -> None:
        with self._lock:
            self._clients.clear()


clients = _Clients()


def build_client(config: dict[str, Any], password: str, timeout: float) -> tuple[zeep.Client, Any]:
    """Load the WSDL; returns the client and the service proxy (bound to the endpoint override if any)."""
    auth = config.get("auth") or {}
    session = requests.Session()
    wsse = None
    if auth.get("type") == "basic":
        session.auth = (str(auth["username"]), password)
    elif auth.get("type") == "wsse":
        wsse = UsernameToken(str(auth["username"]), password)
    transport = Transport(session=session, timeout=timeout, operation_timeout=timeout)
    try:
        client = zeep.Client(str(config["wsdl"]), transport=transport, wsse=wsse)
    except requests.RequestException as exc:
        raise ConnectorError(f"The WSDL could not be loaded: {type(exc).__name__}") from None
    except (zeep.exceptions.Error, ValueError) as exc:
        raise ConnectorError(f"The WSDL is not usable: {exc}", permanent=True) from None
    if config.get("endpoint"):
        binding = next(iter(client.wsdl.bindings))
        return client, client.create_service(binding, str(config["endpoint"]))
    return client, client.service


def _password(connector: Connector) -> str:
    if not (connector.config or {}).get("auth"):
        return ""
    try:
        password = connector.secrets.get("password") or ""
    except SecretsUnreadable as exc:
        raise ConnectorError(f"{connector.code}: {exc}", permanent=True) from None
    if not password:
        raise ConnectorError(f"{connector.code}: auth is configured but no password is set", permanent=True)
    return password


def _walk(value: Any, path: str) -> str:
    for part in [p for p in path.split(".") if p]:
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _duplicate_of(fault: zeep.exceptions.Fault) -> str:
    """The document number a duplicate-reference fault names, or ""."""
    detail = fault.detail
    if detail is None:
        return ""
    found = detail.find(".//{*}Duplicate_Reference/{*}ID")
    return (found.text or "").strip() if found is not None else ""


class SoapAdapter:
    protocol = Protocol.SOAP

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        return validate_soap_config(direction, config)

    def parse(self, raw: bytes) -> Any:
        raise ConnectorError("A SOAP connector only delivers; it receives nothing", permanent=True)

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        config = connector.config or {}
        spec = (config.get("operations") or {}).get(delivery.operation)
        if not isinstance(spec, dict):
            raise ConnectorError(f"{connector.code} has no operation {delivery.operation!r}", permanent=True)
        payload = delivery.payload or {}
        request = workday_journal(payload) if spec.get("request") == "workday_journal" else dict(payload)
        _client, service = clients.get(config, _password(connector), connector.timeout_seconds)
        try:
            operation = getattr(service, str(spec["operation"]))
        except AttributeError:
            raise ConnectorError(f"The WSDL has no operation {spec['operation']}", permanent=True) from None
        try:
            reply = operation(**request)
        except zeep.exceptions.Fault as fault:
            existing = _duplicate_of(fault)
            if existing:
                return SendResult(
                    response={"duplicate_of": existing, "fault": fault.message}, external_id=existing
                )
            raise ConnectorError(f"SOAP fault: {fault.message}", permanent=True) from None
        except zeep.exceptions.TransportError as exc:
            transient = exc.status_code >= 500 or exc.status_code in TRANSIENT_STATUS
            raise ConnectorError(
                f"HTTP {exc.status_code} from the SOAP endpoint", permanent=not transient
            ) from None
        except requests.Timeout:
            raise ConnectorError(
                f"The SOAP endpoint did not answer within {connector.timeout_seconds:g}s"
            ) from None
        except requests.RequestException as exc:
            raise ConnectorError(f"The SOAP endpoint is unreachable: {type(exc).__name__}") from None
        except (zeep.exceptions.ValidationError, TypeError) as exc:
            # The payload does not fit the operation's schema: resending it will not help.
            raise ConnectorError(f"The request does not fit the WSDL: {exc}", permanent=True) from None
        except zeep.exceptions.XMLSyntaxError:
            raise ConnectorError("The SOAP endpoint answered with something that is not XML") from None
        result_path = str(spec.get("result_path") or "")
        response = serialize_object(reply, dict)
        if not isinstance(response, dict):
            # zeep unwraps a reply that holds a single value: put it back where result_path says it was.
            for part in reversed([p for p in result_path.split(".") if p] or ["result"]):
                response = {part: response}
        external_id = _walk(response, result_path)
        return SendResult(response=_jsonable(response), external_id=external_id)

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """Load the WSDL afresh and check that every configured operation is in it."""
        config = connector.config or {}
        try:
            _client, service = build_client(config, _password(connector), connector.timeout_seconds)
        except ConnectorError as exc:
            return False, exc.message
        wanted = sorted(
            {
                str(spec.get("operation"))
                for spec in (config.get("operations") or {}).values()
                if isinstance(spec, dict)
            }
        )
        missing = [name for name in wanted if not hasattr(service, name)]
        if missing:
            return False, f"The WSDL has no operation {', '.join(missing)}"
        return True, f"The WSDL loads and offers {', '.join(wanted)}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
