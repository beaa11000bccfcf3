"""What every simulator server shares: it runs in a background thread, as a context manager or in the foreground."""

from __future__ import annotations

import threading
from typing import Any, Self


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
