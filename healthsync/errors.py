"""Errors that cross the core/app boundary."""

from __future__ import annotations


class ConnectorError(Exception):
    """A connector could not do its job. Permanent errors are not retried; transient ones are."""

    def __init__(self, message: str, *, permanent: bool = False, response: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.response = response


class MappingError(Exception):
    """A message could not be turned into a canonical event (bad data, not a bug)."""

    def __init__(self, message: str, *, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing or []


class SchemaInvalid(Exception):
    """A canonical event does not validate against its active schema version."""

    def __init__(self, message: str, *, errors: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors
