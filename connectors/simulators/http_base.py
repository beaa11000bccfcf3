"""A small threaded JSON-over-HTTP server the RCM and ERP simulators build on (stdlib only)."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from connectors.simulators.background import HttpServerThread

logger = logging.getLogger(__name__)

Reply = tuple[int, dict[str, Any] | list[Any]]


class JsonSimulator(HttpServerThread):
    """Serves `handle(method, path, headers, body)` on host:port; port 0 picks a free port at start()."""

    name = "simulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.lock = threading.Lock()
        # Counted per "METHOD /path" so tests can assert exactly-once effects.
        self.requests: Counter[str] = Counter()
        # When set, every POST answers with this status (503 for "down for maintenance"), for failure drills.
        self.forced_status: int | None = None

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        return HTTPStatus.NOT_FOUND, problem("Not found", f"No resource at {path}", HTTPStatus.NOT_FOUND)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            server_version = f"HealthSync-{simulator.name}/1.0"

            def _dispatch(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                with simulator.lock:
                    simulator.requests[f"{method} {path}"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        self._reply(400, problem("Malformed JSON", "The request body is not JSON.", 400))
                        return
                if method != "GET" and simulator.forced_status is not None:
                    status = simulator.forced_status
                    self._reply(status, problem("Unavailable", "The simulator was told to fail.", status))
                    return
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, payload = simulator.handle(method, path, headers, body)
                self._reply(status, payload)

            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                content_type = "application/problem+json" if status >= 400 else "application/json"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def log_message(self, format: str, *args: Any) -> None:
                # Request lines carry no PHI, but the test output stays quiet; debug logging has them.
                logger.debug("%s %s", simulator.name, format % args)

        return Handler


def problem(title: str, detail: str, status: int, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem detail body."""
    return {"type": "about:blank", "title": title, "detail": detail, "status": int(status), **extra}
