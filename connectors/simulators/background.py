"""What every simulator server shares: it runs in a background thread, as a context manager or in the foreground."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

logger = logging.getLogger(__name__)


class BackgroundServer:
    """Subclasses implement start() (which sets `_thread`) and stop(); this gives the rest."""

    _thread: threading.Thread | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def serve_forever(self) -> None:
        """Serve until interrupted (for a management command or `python -m`)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class HttpServerThread(BackgroundServer):
    """A ThreadingHTTPServer on host:port (0 picks a free port at start()), served from a daemon thread.

    Subclasses give `name` and `_handler_class()`, the request handler bound to themselves.
    """

    name = "http-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._requested_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        """Listen and serve from a background thread; returns self so tests can write Sim().start()."""
        if self._server is None:
            self._server = ThreadingHTTPServer((self.host, self._requested_port), self._handler_class())
            self._server.daemon_threads = True
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
            )
            self._thread.start()
            logger.info("%s listening on %s", self.name, self.url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
