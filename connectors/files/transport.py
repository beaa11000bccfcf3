"""Where files live: a local folder or an SFTP server (asyncssh), behind one small synchronous interface.

    with open_transport({"type": "folder", "path": "/data/payroll"}) as t: ...
    with open_transport({"type": "sftp", "host": "h", "port": 22, "username": "u",
                         "host_key": "ssh-ed25519 AAAA…", "path": "/drop"},
                        secrets={"sftp_password": "…"}) as t: ...

Paths given to a transport are relative to its root. `write` is atomic: a temporary dot-name, then a rename,
so a reader polling the folder never sees half a file. The SFTP server's host key must be given (host_key,
or known_hosts: a file): a connector never trusts whatever key answers.

The SFTP password or private key is a connector secret (``sftp_password`` / ``sftp_private_key``, encrypted
at rest, healthsync/secrets.py), never part of the config. Older configs that kept ``password`` or
``private_key`` in the location still work; the console moves them into the secrets on the next save.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncssh

from healthsync.errors import ConnectorError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """A regular file as listed: name (no directory), size in bytes and modification time."""

    name: str
    size: int
    mtime: float


class Transport(Protocol):
    def list(self, directory: str = "") -> list[Entry]: ...

    def read(self, path: str) -> bytes: ...

    def write(self, path: str, data: bytes) -> None: ...

    def rename(self, source: str, target: str) -> None: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, directory: str) -> None: ...

    def close(self) -> None: ...


def validate_location(config: Any) -> list[str]:
    """Problems with a folder or sftp location config."""
    if not isinstance(config, dict):
        return ["must be an object with type folder or sftp"]
    kind = config.get("type", "folder")
    errors: list[str] = []
    if kind not in ("folder", "sftp"):
        return ["type must be folder or sftp"]
    if not isinstance(config.get("path"), str) or not config["path"]:
        errors.append("path must name the directory")
    if kind == "sftp":
        if not config.get("host"):
            errors.append("host is required for sftp")
        port = config.get("port", 22)
        if not isinstance(port, int) or not 0 < port < 65536:
            errors.append("port must be an integer between 1 and 65535")
        if not config.get("username"):
            errors.append("username is required for sftp")
        if not (config.get("host_key") or config.get("known_hosts")):
            errors.append("host_key (the server's public key) or known_hosts is required for sftp")
    return errors


# Which secret holds which credential of an SFTP location; the console renders one password input per name.
SFTP_SECRETS = {"sftp_password": "password", "sftp_private_key": "private_key"}


def open_transport(
    config: dict[str, Any], *, timeout: float = 10.0, secrets: dict[str, str] | None = None
) -> FolderTransport | SftpTransport:
    """The location's transport; an SFTP login comes from `secrets` (or a legacy inline password/key)."""
    if config.get("type", "folder") == "sftp":
        login = dict(config)
        for secret, key in SFTP_SECRETS.items():
            if (secrets or {}).get(secret):
                login[key] = (secrets or {})[secret]
        if not (login.get("password") or login.get("private_key")):
            raise ConnectorError(
                f"sftp://{config.get('host')}: no sftp_password or sftp_private_key secret is set",
                permanent=True,
            )
        return SftpTransport(login, timeout=timeout)
    return FolderTransport(config["path"])


def connector_secrets(connector: Any) -> dict[str, str]:
    """The connector's decrypted secrets; an unreadable store is a permanent error, not a crash."""
    from healthsync.secrets import SecretsUnreadable

    try:
        return dict(connector.secrets)
    except SecretsUnreadable as exc:
        raise ConnectorError(f"{connector.code}: {exc}", permanent=True) from None


class FolderTransport:
    """A directory on this machine (or a mounted share)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConnectorError(f"Folder {root} does not exist", permanent=True)

    def _path(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise ConnectorError(f"{path} leaves the configured folder", permanent=True)
        return full

    def list(self, directory: str = "") -> list[Entry]:
        entries = []
        with os.scandir(self._path(directory)) as found:
            for item in found:
                if item.is_file(follow_symlinks=False):
                    stat = item.stat()
                    entries.append(Entry(item.name, stat.st_size, stat.st_mtime))
        return sorted(entries, key=lambda e: e.name)

    def read(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        target = self._path(path)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)

    def rename(self, source: str, target: str) -> None:
        os.replace(self._path(source), self._path(target))

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def makedirs(self, directory: str) -> None:
        self._path(directory).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> FolderTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SftpTransport:
    """An SFTP directory; one SSH connection for the life of the object (use it as a context manager)."""

    def __init__(self, config: dict[str, Any], *, timeout: float = 10.0) -> None:
        self.root = str(config.get("path") or ".")
        self.timeout = timeout
        self.label = f"sftp://{config.get('host')}:{config.get('port', 22)}"
        self._loop = asyncio.new_event_loop()
        try:
            self._conn, self._sftp = self._run(self._connect(config))
        except Exception:
            self._loop.close()
            raise

    async def _connect(self, config: dict[str, Any]) -> tuple[Any, Any]:
        known_hosts: Any
        if config.get("host_key"):
            known_hosts = ([asyncssh.import_public_key(str(config["host_key"]))], [], [])
        else:
            known_hosts = str(config["known_hosts"])
        options: dict[str, Any] = {
            "port": int(config.get("port", 22)),
            "username": str(config["username"]),
            "known_hosts": known_hosts,
            "connect_timeout": self.timeout,
        }
        # The login arrives merged from the connector's secrets (open_transport); it is never logged.
        if config.get("private_key"):
            options["client_keys"] = [asyncssh.import_private_key(str(config["private_key"]))]
            options["password"] = None
        else:
            options["password"] = str(config["password"])
            options["client_keys"] = None
        try:
            conn = await asyncssh.connect(str(config["host"]), **options)
        except asyncssh.HostKeyNotVerifiable:
            raise ConnectorError(
                f"{self.label} presented a host key we do not trust", permanent=True
            ) from None
        except asyncssh.PermissionDenied:
            raise ConnectorError(f"{self.label} refused the credentials", permanent=True) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise ConnectorError(f"{self.label} is unreachable: {type(exc).__name__}") from None
        return conn, await conn.start_sftp_client()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except TimeoutError:
            raise ConnectorError(f"{self.label} did not answer within {self.timeout:g}s") from None
        except asyncssh.SFTPError as exc:
            raise ConnectorError(f"{self.label}: {exc.reason}") from None

    def _path(self, path: str) -> str:
        return posixpath.join(self.root, path) if path else self.root

    def list(self, directory: str = "") -> list[Entry]:
        async def go() -> list[Entry]:
            entries = []
            for item in await self._sftp.readdir(self._path(directory)):
                attrs = item.attrs
                if attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
                    entries.append(Entry(str(item.filename), int(attrs.size or 0), float(attrs.mtime or 0)))
            return sorted(entries, key=lambda e: e.name)

        return self._run(go())

    def read(self, path: str) -> bytes:
        async def go() -> bytes:
            async with self._sftp.open(self._path(path), "rb") as handle:
                return await handle.read()

        return self._run(go())

    def write(self, path: str, data: bytes) -> None:
        target = self._path(path)
        directory, name = posixpath.split(target)
        temp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.part")

        async def go() -> None:
            async with self._sftp.open(temp, "wb") as handle:
                await handle.write(data)
            await self._replace(temp, target)

        self._run(go())

    async def _replace(self, source: str, target: str) -> None:
        try:
            await self._sftp.posix_rename(source, target)
        except asyncssh.SFTPOpUnsupported:
            if await self._sftp.exists(target):
                await self._sftp.remove(target)
            await self._sftp.rename(source, target)

    def rename(self, source: str, target: str) -> None:
        self._run(self._replace(self._path(source), self._path(target)))

    def exists(self, path: str) -> bool:
        return self._run(self._sftp.exists(self._path(path)))

    def makedirs(self, directory: str) -> None:
        self._run(self._sftp.makedirs(self._path(directory), exist_ok=True))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._sftp.exit()
            self._conn.close()
            self._loop.run_until_complete(asyncio.wait_for(self._conn.wait_closed(), self.timeout))
        except (OSError, asyncssh.Error, TimeoutError):
            pass  # closing a connection that already dropped
        finally:
            self._loop.close()

    def __enter__(self) -> SftpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
