"""What the inbound REST/JSON endpoint makes of a body, and the checks the console runs on its settings.

Inbound config (all optional)::

    {
      "type_field": "type",               # JSON path of the message type (mapping sets are chosen by it)
      "message_type": "",                 # or one fixed type for every body on this connector
      "id_field": "id",                   # JSON path of the sender's message id (the duplicate check)
      "idempotency_header": "Idempotency-Key",  # when sent, it is the message id instead (batch: "<key>#<i>")
      "api_key_header": "X-Api-Key",      # the header carrying the connector secret inbound_api_key
      "max_body_bytes": 1048576           # larger bodies are refused with 413 (Django's own limit applies too)
    }

Paths use the mapping engine's syntax (``header.kind``, ``events[1].id``), so an engineer writes them the way
they write mapping rules. No HTTP and no database here: views.py does those.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from connectors.inbound_auth import DEFAULT_KEY_HEADER
from connectors.json_message import JsonMessage
from healthsync.models import Message

DEFAULT_TYPE_FIELD = "type"
DEFAULT_ID_FIELD = "id"
DEFAULT_IDEMPOTENCY_HEADER = "Idempotency-Key"
TYPE_MAX = Message._meta.get_field("message_type").max_length or 40
CONTROL_MAX = Message._meta.get_field("control_id").max_length or 200

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the endpoint or the HTTP stack reads for something else.
_RESERVED_HEADERS = {"authorization", "content-type", "content-length", "host", "cookie", "transfer-encoding"}


class BodyProblem(Exception):
    """Why a body (or one item of a batch) cannot be taken: an HTTP status, a problem type and a plain reason."""

    def __init__(self, status: int, detail: str, type_: str, field: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type_ = type_
        self.field = field

    def errors(self) -> list[dict[str, str]]:
        return [{"field": self.field, "code": self.type_, "detail": self.detail}] if self.field else []


@dataclass(frozen=True)
class InboundConfig:
    """A REST inbound connector's settings, defaults filled in."""

    type_field: str = DEFAULT_TYPE_FIELD
    id_field: str = DEFAULT_ID_FIELD
    message_type: str = ""
    idempotency_header: str = DEFAULT_IDEMPOTENCY_HEADER
    max_body_bytes: int | None = None

    @classmethod
    def of(cls, config: dict[str, Any] | None) -> InboundConfig:
        config = config or {}
        limit = config.get("max_body_bytes")
        return cls(
            type_field=str(config.get("type_field") or DEFAULT_TYPE_FIELD),
            id_field=str(config.get("id_field") or DEFAULT_ID_FIELD),
            message_type=str(config.get("message_type") or ""),
            idempotency_header=str(config.get("idempotency_header") or DEFAULT_IDEMPOTENCY_HEADER),
            max_body_bytes=limit if isinstance(limit, int) and limit > 0 else None,
        )


@dataclass(frozen=True)
class Identified:
    """What the message store needs to know about one object: its type and the sender's id for it."""

    message_type: str
    control_id: str


def load_body(raw: bytes) -> dict[str, Any] | list[Any]:
    """The body as a JSON object or array; BodyProblem (400) naming what is wrong otherwise."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BodyProblem(400, "The body is not UTF-8 text.", "invalid-json") from None
    except json.JSONDecodeError as exc:
        raise BodyProblem(
            400, f"The body is not valid JSON (line {exc.lineno}, column {exc.colno}).", "invalid-json"
        ) from None
    if isinstance(data, list):
        if not data:
            raise BodyProblem(400, "The batch is empty: send at least one object.", "not-an-object")
        return data
    if not isinstance(data, dict):
        raise BodyProblem(
            400, "The body must be a JSON object, or an array of objects for a batch.", "not-an-object"
        )
    return data


def identify(data: Any, config: InboundConfig, idempotency_key: str, index: int | None = None) -> Identified:
    """The message type and control id of one object (`index` is its place in a batch, None for a single body).

    The Idempotency-Key header, when sent, wins over the id field: it is the sender saying "this request",
    while the id field may name a business object that changes (an invoice id on each status update).
    """
    if not isinstance(data, dict):
        raise BodyProblem(400, "Each item of a batch must be a JSON object.", "not-an-object")
    message = JsonMessage(data)
    message_type = config.message_type or _scalar(message, config.type_field)
    if not message_type:
        raise BodyProblem(
            422,
            f"The body has no {config.type_field!r} field naming the kind of message.",
            "missing-type",
            config.type_field,
        )
    if len(message_type) > TYPE_MAX:
        raise BodyProblem(
            422,
            f"The message type is longer than {TYPE_MAX} characters.",
            "missing-type",
            config.type_field,
        )
    if idempotency_key:
        control_id = idempotency_key if index is None else f"{idempotency_key}#{index}"
    else:
        control_id = _scalar(message, config.id_field)
    if not control_id:
        raise BodyProblem(
            422,
            f"The body has no {config.id_field!r} field and no {config.idempotency_header} header was sent: "
            "the message id is what recognises a resend.",
            "missing-id",
            config.id_field,
        )
    if len(control_id) > CONTROL_MAX:
        raise BodyProblem(
            422, f"The message id is longer than {CONTROL_MAX} characters.", "missing-id", config.id_field
        )
    return Identified(message_type=message_type, control_id=control_id)


def best_guess(data: Any, config: InboundConfig) -> Identified:
    """Type and id of a body being rejected, as far as they can be read: they help whoever triages it."""
    if not isinstance(data, dict):
        return Identified("", "")
    message = JsonMessage(data)
    return Identified(
        (config.message_type or _scalar(message, config.type_field))[:TYPE_MAX],
        _scalar(message, config.id_field)[:CONTROL_MAX],
    )


def _scalar(message: JsonMessage, path: str) -> str:
    """The text at `path`, or "" when absent or when it is an object or list (not an id or a type)."""
    value = message.get(path).strip()
    if value[:1] in ("{", "["):
        try:
            if isinstance(json.loads(value), dict | list):
                return ""
        except ValueError:
            pass
    return value


def validate_inbound_config(config: dict[str, Any]) -> list[str]:
    """The inbound settings' errors, in the words the console shows under the form."""
    errors: list[str] = []
    for key in ("type_field", "id_field"):
        value = config.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or "[*]" in value:
            errors.append(f"{key} must be one JSON path such as header.kind or events[1].id (no [*])")
            continue
        try:
            JsonMessage({}).get(value)
        except ValueError:
            errors.append(f"{key} must be one JSON path such as header.kind or events[1].id, not {value!r}")
    message_type = config.get("message_type")
    if message_type not in (None, "") and (
        not isinstance(message_type, str) or not message_type.strip() or len(message_type) > TYPE_MAX
    ):
        errors.append(f"message_type must be text of at most {TYPE_MAX} characters")
    for key, default in (("api_key_header", DEFAULT_KEY_HEADER), ("idempotency_header", "")):
        value = config.get(key, default)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not _HEADER_NAME.match(value):
            errors.append(f"{key} must be a header name such as {default or DEFAULT_IDEMPOTENCY_HEADER}")
        elif value.lower() in _RESERVED_HEADERS:
            errors.append(f"{key} cannot be {value}: that header already means something else")
    key_header = config.get("api_key_header") or DEFAULT_KEY_HEADER
    id_header = config.get("idempotency_header") or DEFAULT_IDEMPOTENCY_HEADER
    if isinstance(key_header, str) and isinstance(id_header, str) and key_header.lower() == id_header.lower():
        errors.append("api_key_header and idempotency_header must be different headers")
    limit = config.get("max_body_bytes")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        errors.append("max_body_bytes must be a positive number of bytes")
    return errors
