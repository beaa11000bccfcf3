"""A real SFTP server (asyncssh) on localhost, for tests and the demo's payroll drop.

    server = SftpServer("/tmp/drop", username="payroll", password="secret").start()   # port 0: a free one
    server.port, server.host_key      # what a connector config needs (host_key: the public key line)
    server.connector_config(path="/in")  # a ready sftp location config (no password)
    server.secrets()                  # {"sftp_password": …}: what the connector keeps encrypted
    server.stop()

The server is chrooted to `root`: clients see it as "/". A fresh host key is made per server unless one is
given, so a test can also check that a connector refuses an unknown key.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import asyncssh

from connectors.simulators.background import BackgroundServer

logger = logging.getLogger(__name__)


class _Auth(asyncssh.SSHServer):
    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == self._username and password == self._password


class SftpServer(BackgroundServer):
    """Serves `root` over SFTP on host:port from a background thread with its own event loop."""

    def __init__(
        self,
        root: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str = "payroll",
        password: str = "payroll-demo",  # noqa: S107 - the simulator's demo credential
        host_key: asyncssh.SSHKey | None = None,
    ) -> None:
        self.root = str(root)
        self.host = host
        self._requested_port = port
        self.username = username
        self.password = password
        self.key = host_key or asyncssh.generate_private_key("ssh-ed25519")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncssh.SSHAcceptor | None = None
        self.port = port

    @property
    def host_key(self) -> str:
        return self.key.export_public_key().decode().strip()

    def connector_config(self, path: str = "/") -> dict[str, Any]:
        """An sftp location for a connector's config; the password is not in it (see `secrets()`)."""
        return {
            "type": "sftp",
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "host_key": self.host_key,
            "path": path,
        }

    def secrets(self) -> dict[str, str]:
        """The login as a connector's encrypted secrets hold it (connectors.files.transport.SFTP_SECRETS)."""
        return {"sftp_password": self.password}

    def start(self) -> SftpServer:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(self._listen())
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="sftp-simulator", daemon=True)
        self._thread.start()
        ready.wait(timeout=10)
        if failure:
            self._thread = None
            raise failure[0]
        logger.info("sftp simulator listening on %s:%s", self.host, self.port)
        return self

    async def _listen(self) -> asyncssh.SSHAcceptor:
        root = self.root
        return await asyncssh.listen(
            self.host,
            self._requested_port,
            server_host_keys=[self.key],
            server_factory=lambda: _Auth(self.username, self.password),
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root),
            allow_scp=False,
        )

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=5)
        loop.close()
        self._thread = None
        self._loop = None


def host_key_from_file(path: str) -> asyncssh.SSHKey:
    """The private host key kept in `path`, made (ed25519, owner-only) the first time.

    A server that restarts with the same key keeps the connectors that trust it working; the key file must
    stay outside the served root, or any client could download it.
    """
    import os

    if os.path.exists(path):
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.export_private_key())
    return key


def main() -> None:  # pragma: no cover - manual use: python -m connectors.simulators.sftp_server
    import os

    root = os.getenv("SFTP_ROOT", "var/sftp")
    os.makedirs(root, exist_ok=True)
    server = SftpServer(root, port=int(os.getenv("PORT", "2222")))
    server.start()
    print(f"sftp simulator on {server.host}:{server.port}, root {root}, host key {server.host_key}")
    server.serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
