"""Read a JSON payload with the mapping engine's source paths, so REST/JSON feeds map like HL7 messages.

    message = parse(b'{"type": "ap_invoice", "id": "INV-1", "lines": [{"qty": "2"}, {"qty": ""}]}')
    message.get("id")                 -> "INV-1"
    message.get("supplier.name")      -> "" when absent
    message.get("lines[2].qty")       -> "" (1-based index, like HL7 repetitions)
    message.get_all("lines[*].qty")   -> ["2", ""]  one value per element, empties kept, so rules stay aligned
    message.header.message_type       -> data["type"], message.header.control_id -> data["id"]

Scalars come back as text (numbers via str, booleans as "true"/"false"), objects and lists as compact JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_PART = re.compile(r"^(?P<key>[^\[\]]+)(?:\[(?P<index>\d+|\*)\])?$")


class JsonParseError(ValueError):
    """The payload is not a JSON object; `code` says why (as HL7ParseError does)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class JsonHeader:
    """What the pipeline reads from a header: the message type and the source's own id."""

    message_type: str
    control_id: str
    sender: str = ""


class JsonMessage:
    """A parsed JSON object addressed by dotted paths with [n] (1-based) and [*] on lists."""

    def __init__(self, data: dict[str, Any], *, type_key: str = "type", id_key: str = "id") -> None:
        self.data = data
        self.header = JsonHeader(
            message_type=_text(data.get(type_key)),
            control_id=_text(data.get(id_key)),
            sender=_text(data.get("source")),
        )

    def get(self, path: str) -> str:
        values = self._walk(path)
        return values[0] if values else ""

    def get_all(self, path: str) -> list[str]:
        return self._walk(path)

    def _walk(self, path: str) -> list[str]:
        if not path or path.strip() != path:
            raise ValueError(f"invalid JSON path {path!r}")
        nodes: list[Any] = [self.data]
        for part in path.split("."):
            match = _PART.match(part)
            if match is None:
                raise ValueError(f"invalid JSON path {path!r}")
            key, index = match.group("key"), match.group("index")
            following: list[Any] = []
            for node in nodes:
                child = node.get(key) if isinstance(node, dict) else None
                if index is None:
                    following.append(child)
                elif index == "*":
                    following.extend(child if isinstance(child, list) else [])
                else:
                    position = int(index) - 1
                    following.append(
                        child[position] if isinstance(child, list) and 0 <= position < len(child) else None
                    )
            nodes = following
        return [_text(node) for node in nodes]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def parse(raw: bytes, *, type_key: str = "type", id_key: str = "id") -> JsonMessage:
    """Parse UTF-8 JSON bytes holding one object; JsonParseError says what is wrong (the raw bytes are kept)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise JsonParseError("The payload is not UTF-8 text", "encoding") from None
    except json.JSONDecodeError as exc:
        raise JsonParseError(
            f"The payload is not valid JSON (line {exc.lineno}, column {exc.colno})", "syntax"
        ) from None
    if not isinstance(data, dict):
        raise JsonParseError("The payload must be a JSON object", "not_object")
    return JsonMessage(data, type_key=type_key, id_key=id_key)
