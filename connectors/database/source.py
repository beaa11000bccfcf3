"""Reading new rows from a reporting database: PostgreSQL (psycopg) or SQLite, opened read-only.

The DSN is a connector secret (``postgresql://user:pw@host/db`` or ``sqlite:///path/to/file.db``). Table and
column names come from the connector's config and are checked against a strict identifier pattern and quoted,
because they are placed in the SQL; every value (the mark) is a parameter.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

from healthsync.errors import ConnectorError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DSN_SCHEMES = ("postgresql", "postgres", "sqlite")


def validate_identifier(value: Any, what: str, *, dotted: bool = False) -> list[str]:
    parts = str(value).split(".") if dotted and isinstance(value, str) else [value]
    if not isinstance(value, str) or len(parts) > 2 or not all(IDENTIFIER.match(str(p)) for p in parts):
        hint = " (schema.table allowed)" if dotted else ""
        return [f"{what} must be a plain SQL name such as updated_at{hint}, not {value!r}"]
    return []


def validate_dsn(dsn: str) -> list[str]:
    scheme = urlsplit(dsn).scheme
    if scheme not in DSN_SCHEMES:
        return ["dsn must start with postgresql:// or sqlite:///"]
    if scheme == "sqlite" and not _sqlite_path(dsn):
        return ["a sqlite dsn names the file: sqlite:///path/to/file.db"]
    return []


def quote(name: str) -> str:
    return ".".join(f'"{part}"' for part in name.split("."))


def _sqlite_path(dsn: str) -> str:
    return unquote(dsn[len("sqlite:///") :]) if dsn.startswith("sqlite:///") else ""


class Source:
    """An open read-only connection and the dialect bits that differ (placeholder, error kinds)."""

    def __init__(self, connection: Any, placeholder: str, label: str) -> None:
        self.connection = connection
        self.placeholder = placeholder
        self.label = label

    def fetch(self, sql: str, params: list[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one SELECT; column names and rows. Errors become ConnectorError (bad SQL is permanent)."""
        try:
            cursor = self.connection.cursor()
            try:
                cursor.execute(sql, params)
                columns = [d[0] for d in cursor.description or []]
                return columns, list(cursor.fetchall())
            finally:
                cursor.close()
        except psycopg.Error as exc:
            # SQLSTATE 42 (unknown table/column, syntax, privilege), 22 (data), 25006 (a write in a
            # read-only transaction) will not change by retrying; anything else (connection lost) may.
            state = exc.sqlstate or ""
            if state.startswith(("42", "22", "25006")):
                raise ConnectorError(
                    f"{self.label} refused the query: {_first_line(exc)}", permanent=True
                ) from None
            raise ConnectorError(f"{self.label}: {type(exc).__name__}") from None
        except sqlite3.OperationalError as exc:
            text = str(exc)
            permanent = text.startswith(("no such", "near ")) or "syntax error" in text
            raise ConnectorError(f"{self.label}: {text}", permanent=permanent) from None
        except sqlite3.Error as exc:
            raise ConnectorError(f"{self.label}: {exc}", permanent=True) from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextmanager
def open_source(dsn: str, *, timeout: float = 10.0) -> Iterator[Source]:
    """A read-only connection to the reporting database; closed on exit."""
    problems = validate_dsn(dsn)
    if problems:
        raise ConnectorError(problems[0], permanent=True)
    if dsn.startswith("sqlite:"):
        path = _sqlite_path(dsn)
        label = f"sqlite:{path.rsplit('/', 1)[-1]}"
        try:
            # mode=ro: polling never writes to the system of record, and a missing file is an error,
            # not a new empty database.
            connection: Any = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
        except sqlite3.Error as exc:
            raise ConnectorError(f"{label}: {exc}") from None
        placeholder = "?"
    else:
        parts = urlsplit(dsn)
        label = f"postgresql://{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        try:
            connection = psycopg.connect(
                dsn,
                connect_timeout=max(int(timeout), 1),
                options=f"-c default_transaction_read_only=on -c statement_timeout={int(timeout * 1000)}",
            )
        except psycopg.OperationalError:
            # The message may echo the DSN's user; say only where and that it failed.
            raise ConnectorError(f"{label} is unreachable or refused the login") from None
        placeholder = "%s"
    try:
        yield Source(connection, placeholder, label)
    finally:
        connection.close()
