"""A small in-memory FHIR R4 server for tests and the demo (stdlib HTTP, real sockets).

It does what HealthSync relies on and no more: create (with conditional create through If-None-Exist:
identifier=system|value), update by id, read, search by ``identifier`` and ``_lastUpdated=gt…`` sorted by
last update with paging through ``Bundle.link[next]``, and ``/metadata``. Optionally it guards everything with
OAuth2 client credentials (``POST /oauth/token``) and counts token requests, so tests can check caching and
refresh. Every resource gets ``meta.versionId`` and a strictly increasing ``meta.lastUpdated``.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from connectors.simulators.background import HttpServerThread

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


def _outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


class FhirServerSimulator(HttpServerThread):
    """Serves FHIR on host:port (0 picks a free port at start()); resources live in memory."""

    name = "fhir-server"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_id: str = "",
        client_secret: str = "",
        token_lifetime: int = 3600,
        page_size: int = 50,
    ) -> None:
        super().__init__(host, port)
        self.lock = threading.Lock()
        self.resources: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: Counter[str] = Counter()
        self.token_requests = 0
        self.tokens: set[str] = set()
        # OAuth2 is on when a client id is given: every FHIR request then needs a bearer token.
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.page_size = page_size
        self._next_id = 0
        self._clock = datetime(2026, 1, 1, tzinfo=UTC)

    # State the tests drive --------------------------------------------------------------------------------

    def revoke_tokens(self) -> None:
        """Forget every issued token, as an identity provider does when keys rotate."""
        with self.lock:
            self.tokens.clear()

    def count(self, resource_type: str) -> int:
        with self.lock:
            return len(self.resources.get(resource_type, {}))

    def _stamp(self) -> str:
        # A private clock that only moves forward keeps _lastUpdated strictly ordered even within a millisecond.
        now = datetime.now(UTC)
        self._clock = max(now, self._clock + timedelta(milliseconds=1))
        return self._clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def put_resource(self, resource: dict[str, Any], *, resource_id: str = "") -> dict[str, Any]:
        """Store `resource` (new id unless given) with a new version and lastUpdated; returns the stored copy."""
        with self.lock:
            return self._put(resource, resource_id)

    def _put(self, resource: dict[str, Any], resource_id: str) -> dict[str, Any]:
        resource_type = resource["resourceType"]
        bucket = self.resources.setdefault(resource_type, {})
        if not resource_id:
            self._next_id += 1
            resource_id = f"{resource_type.lower()}-{self._next_id}"
        previous = bucket.get(resource_id)
        version = int(previous["meta"]["versionId"]) + 1 if previous else 1
        stored = {
            **resource,
            "id": resource_id,
            "meta": {**(resource.get("meta") or {}), "versionId": str(version), "lastUpdated": self._stamp()},
        }
        bucket[resource_id] = stored
        return json.loads(json.dumps(stored))

    def _matching(self, resource_type: str, identifier: str) -> list[dict[str, Any]]:
        system, _, value = identifier.rpartition("|") if "|" in identifier else ("", "", identifier)
        found = []
        for resource in self.resources.get(resource_type, {}).values():
            for ident in resource.get("identifier") or []:
                if ident.get("value") == value and (not system or ident.get("system") == system):
                    found.append(resource)
                    break
        return found

    # HTTP ---------------------------------------------------------------------------------------------------

    def _authorized(self, headers: dict[str, str]) -> bool:
        if not self.client_id:
            return True
        auth = headers.get("authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    def _token(self, form: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        import base64

        client_id = (form.get("client_id") or [""])[0]
        client_secret = (form.get("client_secret") or [""])[0]
        basic = headers.get("authorization", "")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        with self.lock:
            self.token_requests += 1
            if (form.get("grant_type") or [""])[0] != "client_credentials":
                return 400, {"error": "unsupported_grant_type"}
            if client_id != self.client_id or client_secret != self.client_secret:
                return 401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"}
            token = secrets.token_urlsafe(16)
            self.tokens.add(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime}

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, extra headers) for one request."""
        parts = [p for p in path.split("/") if p]
        if parts == ["metadata"] and method == "GET":
            return (
                200,
                {"resourceType": "CapabilityStatement", "status": "active", "fhirVersion": "4.0.1"},
                {},
            )
        if not self._authorized(headers):
            return 401, _outcome("login", "A valid bearer token is required."), {"WWW-Authenticate": "Bearer"}
        if not parts or len(parts) > 2:
            return 404, _outcome("not-found", f"No route for {path}"), {}
        resource_type = parts[0]
        resource_id = parts[1] if len(parts) == 2 else ""
        if method == "GET" and resource_id:
            with self.lock:
                found = self.resources.get(resource_type, {}).get(resource_id)
            if found is None:
                return 404, _outcome("not-found", f"{resource_type}/{resource_id} is not known"), {}
            return 200, found, {}
        if method == "GET":
            return 200, self._search(resource_type, path, query), {}
        if not isinstance(body, dict) or body.get("resourceType") != resource_type:
            return 400, _outcome("invalid", f"The body must be a {resource_type} resource"), {}
        if method == "POST" and not resource_id:
            condition = headers.get("if-none-exist", "")
            with self.lock:
                if condition:
                    name, _, value = condition.partition("=")
                    if name != "identifier":
                        return 400, _outcome("not-supported", "If-None-Exist supports identifier only"), {}
                    matches = self._matching(resource_type, value)
                    if len(matches) > 1:
                        return 412, _outcome("duplicate", "More than one resource matches If-None-Exist"), {}
                    if matches:
                        existing = matches[0]
                        return 200, existing, {"Location": self._location(existing)}
                stored = self._put(body, "")
            return 201, stored, {"Location": self._location(stored)}
        if method == "PUT" and resource_id:
            with self.lock:
                existed = resource_id in self.resources.get(resource_type, {})
                stored = self._put(body, resource_id)
            return (200 if existed else 201), stored, {"Location": self._location(stored)}
        return 405, _outcome("not-supported", f"{method} {path} is not supported"), {}

    def _location(self, resource: dict[str, Any]) -> str:
        return (
            f"{self.url}/{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"
        )

    def _search(self, resource_type: str, path: str, query: dict[str, list[str]]) -> dict[str, Any]:
        with self.lock:
            found = list(self.resources.get(resource_type, {}).values())
            if query.get("identifier"):
                found = self._matching(resource_type, query["identifier"][0])
        for value in query.get("_lastUpdated", []):
            if value.startswith("gt"):
                found = [r for r in found if _instant(r["meta"]["lastUpdated"]) > _instant(value[2:])]
            elif value.startswith("ge"):
                found = [r for r in found if _instant(r["meta"]["lastUpdated"]) >= _instant(value[2:])]
        found.sort(key=lambda r: r["meta"]["lastUpdated"])
        count = int((query.get("_count") or [self.page_size])[0])
        offset = int((query.get("_offset") or ["0"])[0])
        page = found[offset : offset + count]
        self_query = {k: v[0] for k, v in query.items()}
        links = [{"relation": "self", "url": f"{self.url}{path}?{urlencode(self_query)}"}]
        if offset + count < len(found):
            links.append(
                {
                    "relation": "next",
                    "url": f"{self.url}{path}?{urlencode({**self_query, '_offset': offset + count})}",
                }
            )
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{self.url}/{resource_type}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "HealthSync-fhir/1.0"

            def _dispatch(self, method: str) -> None:
                split = urlsplit(self.path)
                query = parse_qs(split.query)
                headers = {key.lower(): value for key, value in self.headers.items()}
                with simulator.lock:
                    simulator.requests[f"{method} {split.path}"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if split.path == "/oauth/token" and method == "POST":
                    status, payload = simulator._token(parse_qs(raw.decode()), headers)
                    self._reply(status, payload, {}, "application/json")
                    return
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        self._reply(400, _outcome("structure", "The body is not JSON"), {})
                        return
                status, payload, extra = simulator.handle(method, split.path, query, headers, body)
                self._reply(status, payload, extra)

            def _reply(
                self, status: int, payload: Any, extra: dict[str, str], content_type: str = FHIR_JSON
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("%s %s", simulator.name, format % args)

        return Handler


def _instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
