"""The inbound REST/JSON endpoint: ``POST /api/v1/inbound/<connector>/`` for ERP and RCM systems that push JSON.

The body, a JSON object or an array of them (a batch: one message each, stored in one commit), goes into the
message store and is committed before the answer, like an MLLP ACK: 202 (new) or 200 (a copy of a message
already received) means it is safe, and the worker maps it with the mapping sets for REST and its type.
Errors are RFC 9457 problem details; a body that is not usable is kept as a rejected message for triage,
while one refused at the door (credentials, content type, size) is not stored at all. Callers authenticate
like the FHIR endpoint's: a DRF token or the connector's API key header (connectors/inbound_auth.py).

A DRF view, so that it sits in the OpenAPI schema beside the rest of /api/v1/; it reads the raw body itself
(never request.data), because the stored bytes must be the bytes that were sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.views import APIView

from connectors.inbound_auth import InboundCredentials, caller
from connectors.rest.inbound import (
    BodyProblem,
    Identified,
    InboundConfig,
    best_guess,
    identify,
    load_body,
)
from healthsync.api.problems import PROBLEM_MEDIA_TYPE, problem
from healthsync.choices import Direction, MessageStatus, Protocol
from healthsync.ingest import InboundItem, StoreOutcome, store_messages
from healthsync.models import Connector

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30
_UTF8 = {"utf-8", "utf8"}


class RefusedError(Exception):
    """A request refused before its body is looked at (nothing stored): the problem answer to send."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def _problem(
    status: int, detail: str, type_: str, headers: dict[str, str] | None = None, **extra: Any
) -> HttpResponse:
    response = JsonResponse(
        problem(status, detail, type_=type_, **extra), status=status, content_type=PROBLEM_MEDIA_TYPE
    )
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def _unavailable(what: str) -> HttpResponse:
    return _problem(
        503,
        f"{what} could not be stored; nothing was kept. Send it again later.",
        "unavailable",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
        retry_after=RETRY_AFTER_SECONDS,
    )


def _location(request: HttpRequest, message_id: int) -> str:
    return request.build_absolute_uri(reverse("v1:message-detail", kwargs={"pk": message_id}))


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_ACCEPTED = {
    "type": "object",
    "properties": {
        "message_id": {"type": "integer", "description": "The stored message (for a copy: the first one)."},
        "status": {"type": "string", "enum": ["received", "duplicate"]},
        "duplicate_id": {"type": "integer", "description": "For a copy: the row that keeps this copy."},
    },
    "required": ["message_id", "status"],
}
_BATCH = {
    "type": "object",
    "properties": {
        "received": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {"type": "integer"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "http_status": {"type": "integer", "enum": [200, 202, 400, 422]},
                    "status": {"type": "string", "enum": ["received", "duplicate", "rejected"]},
                    "message_id": {"type": "integer"},
                    "duplicate_id": {"type": "integer"},
                    "location": {"type": "string"},
                    "problem": _PROBLEM_REF,
                },
                "required": ["index", "http_status", "status", "message_id"],
            },
        },
    },
    "required": ["received", "duplicates", "rejected", "items"],
}


class AlwaysJson(BaseContentNegotiation):
    """Answers are JSON whatever the caller's Accept says: a sender's odd Accept header must not cost it
    its message (DRF would answer 406 before the body is stored)."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> Any:
        return renderers[0], renderers[0].media_type


def _problem_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=_PROBLEM_REF, description=description)


class RestInboundView(APIView):
    """POST a JSON object (or an array of them) from an ERP or RCM system into the message store."""

    authentication_classes = [InboundCredentials]
    # None: the credentials are checked in the view (inbound_auth.caller) once the connector is known.
    permission_classes: list[Any] = []
    throttle_classes: list[Any] = []
    parser_classes = [JSONParser]  # documentation only: the view reads the raw body
    versioning_class = None
    content_negotiation_class = AlwaysJson

    @extend_schema(
        operation_id="inbound_receive",
        tags=["inbound"],
        summary="Deliver a JSON message (or a batch) from an ERP or RCM system",
        description=(
            "Stores the body before answering. The message type comes from the connector's `type_field` "
            "(default `type`) or its fixed `message_type`; the message id from the `Idempotency-Key` header "
            "or the `id_field` (default `id`). A copy of a message already received answers 200 with the "
            "first message's id. An array is a batch: every item is stored in one commit and answered "
            "item by item with 207."
        ),
        parameters=[
            OpenApiParameter("code", str, OpenApiParameter.PATH, description="The inbound connector's code."),
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description="The message id, instead of the id field (in a batch, item i gets `<key>#<i>`).",
            ),
        ],
        request={
            "application/json": {
                "oneOf": [
                    {"type": "object", "additionalProperties": True},
                    {
                        "type": "array",
                        "items": {"type": "object", "additionalProperties": True},
                        "minItems": 1,
                    },
                ]
            }
        },
        responses={
            (200, "application/json"): OpenApiResponse(_ACCEPTED, description="A copy already received."),
            (202, "application/json"): OpenApiResponse(_ACCEPTED, description="Stored; processed next."),
            (207, "application/json"): OpenApiResponse(_BATCH, description="A batch, answered per item."),
            (400, PROBLEM_MEDIA_TYPE): _problem_response("Not JSON, or not an object (kept as rejected)."),
            (401, PROBLEM_MEDIA_TYPE): _problem_response("No credentials, or wrong ones; nothing stored."),
            (404, PROBLEM_MEDIA_TYPE): _problem_response("No enabled inbound REST connector with this code."),
            (413, PROBLEM_MEDIA_TYPE): _problem_response("The body is larger than the connector accepts."),
            (415, PROBLEM_MEDIA_TYPE): _problem_response("The body is not sent as UTF-8 application/json."),
            (422, PROBLEM_MEDIA_TYPE): _problem_response("No message type or id (kept as rejected)."),
            (503, PROBLEM_MEDIA_TYPE): _problem_response("Not stored; retry after Retry-After seconds."),
        },
        examples=[
            OpenApiExample(
                "AP invoice status",
                value={"type": "ap_invoice_status", "id": "EVT-1001", "invoice": "INV-9", "status": "paid"},
                request_only=True,
            )
        ],
    )
    def post(self, request: Request, code: str) -> HttpResponse:
        http = request._request
        try:
            connector = _connector(code)
            sender = _authenticated(http, connector)
            raw = _body(http, InboundConfig.of(connector.config))
        except RefusedError as refused:
            return refused.response
        except (OperationalError, InterfaceError):
            logger.exception("rest inbound: the database did not answer for connector %s", code)
            return _unavailable("The message")
        return _receive(http, connector, sender, raw)


def _connector(code: str) -> Connector:
    connector = Connector.objects.filter(
        code=code, protocol=Protocol.REST, direction=Direction.INBOUND, is_enabled=True
    ).first()
    if connector is None:
        raise RefusedError(_problem(404, f"No enabled inbound REST connector {code!r}.", "not-found"))
    return connector


def _authenticated(request: HttpRequest, connector: Connector) -> str:
    sender = caller(request, connector, endpoint="rest inbound")
    if not sender:
        raise RefusedError(
            _problem(
                401,
                "Send Authorization: Token … or the connector's API key header.",
                "not-authenticated",
                {"WWW-Authenticate": "Token"},
            )
        )
    return sender


def _body(request: HttpRequest, config: InboundConfig) -> bytes:
    """The raw body, once its content type and size are acceptable."""
    content_type = (request.content_type or "").lower()
    is_json = content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )
    if not is_json:
        raise RefusedError(
            _problem(
                415,
                f"Send the body as application/json, not {content_type or 'without a Content-Type'}.",
                "unsupported-media-type",
            )
        )
    charset = (request.content_params or {}).get("charset", "utf-8").lower()
    if charset not in _UTF8:
        raise RefusedError(_problem(415, f"Send the body as UTF-8, not {charset}.", "unsupported-media-type"))
    too_big = _problem(413, "The body is larger than this connector accepts.", "payload-too-large")
    limit = config.max_body_bytes
    with contextlib.suppress(ValueError):
        if limit and int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            raise RefusedError(too_big)
    try:
        raw = request.body
    except RequestDataTooBig:
        raise RefusedError(too_big) from None
    if limit and len(raw) > limit:
        raise RefusedError(too_big)
    return raw


def _receive(request: HttpRequest, connector: Connector, sender: str, raw: bytes) -> HttpResponse:
    config = InboundConfig.of(connector.config)
    key = request.headers.get(config.idempotency_header, "").strip()
    try:
        data = load_body(raw)
    except BodyProblem as bad:
        return _reject(request, connector, sender, raw, bad, None)
    if isinstance(data, list):
        return _receive_batch(request, connector, sender, data, config, key)
    try:
        identified = identify(data, config, key)
    except BodyProblem as bad:
        return _reject(request, connector, sender, raw, bad, data)
    try:
        (outcome,) = store_messages([_item(connector, sender, raw, identified)])
    except DatabaseError:
        logger.exception("rest inbound: could not store a message for connector %s", connector.pk)
        return _unavailable("The message")
    body = _answer(outcome)
    response = JsonResponse(body, status=200 if outcome.is_duplicate else 202)
    response["Location"] = _location(request, body["message_id"])
    response["X-HealthSync-Message"] = str(body["message_id"])
    return response


def _item(connector: Connector, sender: str, raw: bytes, identified: Identified) -> InboundItem:
    """A good body (or batch element) as the message store takes it."""
    return InboundItem(
        connector_id=connector.pk,
        raw=raw,
        sender=sender,
        control_id=identified.control_id,
        message_type=identified.message_type,
        lane=connector.lane,
    )


def _answer(outcome: StoreOutcome) -> dict[str, Any]:
    if outcome.is_duplicate and outcome.duplicate_of is not None:
        return {"message_id": outcome.duplicate_of, "status": "duplicate", "duplicate_id": outcome.message_id}
    return {"message_id": outcome.message_id, "status": "received"}


def _receive_batch(
    request: HttpRequest,
    connector: Connector,
    sender: str,
    data: list[Any],
    config: InboundConfig,
    key: str,
) -> HttpResponse:
    """One message per item, all stored in one commit; a bad item is kept as rejected and answered alone."""
    items: list[InboundItem] = []
    problems: dict[int, BodyProblem] = {}
    for index, element in enumerate(data):
        raw = json.dumps(element, ensure_ascii=False).encode()
        try:
            identified = identify(element, config, key, index)
        except BodyProblem as bad:
            problems[index] = bad
            guess = best_guess(element, config)
            items.append(_rejected_item(connector, sender, raw, bad, guess.message_type, guess.control_id))
            continue
        items.append(_item(connector, sender, raw, identified))
    try:
        outcomes = store_messages(items)
    except DatabaseError:
        logger.exception("rest inbound: could not store a batch for connector %s", connector.pk)
        return _unavailable("The batch")
    answers: list[dict[str, Any]] = []
    for index, outcome in enumerate(outcomes):
        bad = problems.get(index)
        if bad is not None:
            answers.append(
                {
                    "index": index,
                    "http_status": bad.status,
                    "status": "rejected",
                    "message_id": outcome.message_id,
                    "problem": problem(bad.status, bad.detail, type_=bad.type_, errors=bad.errors()),
                }
            )
            continue
        answer = _answer(outcome)
        answers.append(
            {
                "index": index,
                "http_status": 200 if outcome.is_duplicate else 202,
                **answer,
                "location": _location(request, answer["message_id"]),
            }
        )
    if problems:
        logger.info(
            "rest inbound: rejected %d of %d batch items for connector %s",
            len(problems),
            len(data),
            connector.pk,
        )
    body = {
        "received": sum(o.status == MessageStatus.RECEIVED for o in outcomes),
        "duplicates": sum(o.is_duplicate for o in outcomes),
        "rejected": len(problems),
        "items": answers,
    }
    response = JsonResponse(body, status=207)
    response["X-HealthSync-Messages"] = ",".join(str(o.message_id) for o in outcomes)
    return response


def _rejected_item(
    connector: Connector, sender: str, raw: bytes, bad: BodyProblem, message_type: str, control_id: str
) -> InboundItem:
    return InboundItem(
        connector_id=connector.pk,
        raw=raw,
        sender=sender,
        control_id=control_id,
        message_type=message_type,
        lane=connector.lane,
        status=MessageStatus.REJECTED,
        error=f"HTTP {bad.status}: {bad.detail}"[:4000],
    )


def _reject(
    request: HttpRequest, connector: Connector, sender: str, raw: bytes, bad: BodyProblem, data: Any
) -> HttpResponse:
    """Keep an unusable body as a rejected message, so that it can be looked at, and answer why."""
    guess = best_guess(data, InboundConfig.of(connector.config))
    item = _rejected_item(connector, sender, raw, bad, guess.message_type, guess.control_id)
    extra: dict[str, Any] = {"errors": bad.errors()} if bad.field else {}
    headers: dict[str, str] = {}
    try:
        (outcome,) = store_messages([item])
        extra["message_id"] = outcome.message_id
        headers["X-HealthSync-Message"] = str(outcome.message_id)
    except DatabaseError:
        # The sender is told what is wrong either way; resending the same body would not help it.
        logger.exception("rest inbound: could not keep a rejected body for connector %s", connector.pk)
    logger.info("rest inbound: rejected a body for connector %s (%s)", connector.pk, bad.type_)
    return _problem(bad.status, bad.detail, bad.type_, headers, **extra)
