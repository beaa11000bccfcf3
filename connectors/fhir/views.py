"""The inbound FHIR endpoint: ``POST /fhir/<connector>/<Type>`` and ``POST /fhir/<connector>/`` (transaction or
batch Bundle, split into one message per entry: see bundles.py).

The body is stored in the message store and committed before the answer, like an MLLP ACK: 201 (or 200 for a
transaction, or for a copy already received) means the message is safe. Bad input is answered 400/422 with an
OperationOutcome naming the problem, and kept as a rejected message for triage. Callers authenticate with a
DRF token (``Authorization: Token …``) or the connector's own API key header, whose value is a connector
secret (``inbound_api_key``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from connectors.fhir.bundles import entry_message
from connectors.fhir.resources import (
    Checked,
    FhirInputError,
    Issue,
    check_resource,
    load_json,
    message_type_for,
    operation_outcome,
)
from connectors.inbound_auth import caller
from healthsync.choices import Direction, MessageStatus, Protocol
from healthsync.ingest import InboundItem, StoreOutcome, store_messages
from healthsync.models import Connector

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


def _reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(body), status=status, content_type=FHIR_JSON)
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def _outcome(status: int, code: str, diagnostics: str, expression: str = "") -> HttpResponse:
    return _reply(status, operation_outcome([Issue(code, diagnostics, expression)]))


def control_id_for(data: dict[str, Any]) -> str:
    """The resource id, with its version when the sender gives one, else with a digest of the content.

    A retry of the same payload is then a duplicate, while a changed resource under the same id (an
    encounter going from in-progress to finished) is a new message.
    """
    resource_id = str(data.get("id") or "")
    version = str((data.get("meta") or {}).get("versionId") or "")
    if version:
        return f"{resource_id}/_history/{version}"
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return f"{resource_id}#{hashlib.sha256(canonical).hexdigest()[:16]}"


@csrf_exempt
@require_POST
def receive(request: HttpRequest, code: str, resource_type: str = "") -> HttpResponse:
    connector = Connector.objects.filter(
        code=code, protocol=Protocol.FHIR, direction=Direction.INBOUND
    ).first()
    if connector is None:
        return _outcome(404, "not-found", f"No inbound FHIR connector {code!r}.")
    sender = caller(request, connector, endpoint="fhir inbound")
    if not sender:
        return _reply(
            401,
            operation_outcome(
                [Issue("login", "Send Authorization: Token … or the connector's API key header.")]
            ),
            {"WWW-Authenticate": "Token"},
        )
    if not connector.is_enabled:
        return _outcome(503, "transient", f"Connector {code} is disabled.")
    try:
        raw = request.body
    except RequestDataTooBig:
        return _outcome(413, "too-costly", "The body is larger than this endpoint accepts.")
    try:
        data = load_json(raw)
        checked = check_resource(data, expected_type=resource_type)
        accepted = (connector.config or {}).get("accepted_types")
        if accepted and checked.resource_type not in accepted:
            raise FhirInputError(
                400,
                [
                    Issue(
                        "not-supported",
                        f"Connector {code} does not accept {checked.resource_type}.",
                        "resourceType",
                    )
                ],
                checked.resource_type,
                checked.resource_id,
            )
        if checked.resource_type == "Bundle":
            checked = _entries_accepted(connector, checked)
    except FhirInputError as exc:
        return _reject(connector, raw, sender, exc)
    if checked.resource_type == "Bundle":
        return _receive_bundle(connector, checked, sender)
    item = InboundItem(
        connector_id=connector.pk,
        raw=raw,
        sender=sender,
        control_id=control_id_for(checked.data),
        message_type=checked.message_type,
        lane=connector.lane,
    )
    try:
        (outcome,) = store_messages([item])
    except DatabaseError:
        logger.exception("fhir inbound: could not store a message for connector %s", connector.pk)
        return _outcome(503, "transient", "The message could not be stored; send it again.")
    return _accepted(request, connector, checked, outcome)


def _entries_accepted(connector: Connector, checked: Checked) -> Checked:
    """A Bundle's entries of types the connector does not take are bad entries (the whole of a transaction)."""
    allowed = [t for t in (connector.config or {}).get("accepted_types") or [] if t != "Bundle"]
    if not allowed:
        return checked
    for index, resource in enumerate(checked.entries):
        if index not in checked.entry_issues and resource.get("resourceType") not in allowed:
            issue = Issue(
                "not-supported",
                f"Connector {connector.code} does not accept {resource.get('resourceType')}.",
                f"Bundle.entry[{index}].resource.resourceType",
            )
            checked.entry_issues[index] = [issue]
    if checked.entry_issues and checked.data.get("type") == "transaction":
        issues = [i for found in checked.entry_issues.values() for i in found]
        raise FhirInputError(400, issues, "Bundle", checked.resource_id)
    return checked


def _receive_bundle(connector: Connector, checked: Checked, sender: str) -> HttpResponse:
    """One message per entry, all stored in one transaction, answered entry by entry.

    A transaction reaching here has no bad entry; a batch's bad entries are kept as rejected messages (the
    entry's JSON) and answered with their own OperationOutcome, while the others are stored as usual.
    """
    bad = set(checked.entry_issues)
    entries = checked.data.get("entry") or []
    items: list[InboundItem] = []
    for index, entry in enumerate(entries):
        resource = checked.entries[index]
        if index in bad:
            issues = checked.entry_issues[index]
            items.append(
                InboundItem(
                    connector_id=connector.pk,
                    raw=json.dumps(entry).encode(),
                    sender=sender,
                    control_id=str(resource.get("id") or ""),
                    message_type=message_type_for(resource),
                    lane=connector.lane,
                    status=MessageStatus.REJECTED,
                    error=str(FhirInputError(422, issues))[:4000],
                )
            )
            continue
        items.append(
            InboundItem(
                connector_id=connector.pk,
                raw=entry_message(checked.data, index, skip=bad),
                sender=sender,
                control_id=control_id_for(resource),
                message_type=message_type_for(resource),
                lane=connector.lane,
            )
        )
    try:
        outcomes = store_messages(items)
    except DatabaseError:
        logger.exception("fhir inbound: could not store a Bundle for connector %s", connector.pk)
        return _outcome(503, "transient", "The Bundle could not be stored; send it again.")
    answers = []
    for index, outcome in enumerate(outcomes):
        resource = checked.entries[index]
        if index in bad:
            issues = checked.entry_issues[index]
            status = "400 Bad Request" if issues[0].code == "not-supported" else "422 Unprocessable Entity"
            answers.append({"response": {"status": status, "outcome": operation_outcome(issues)}})
            continue
        note = (
            f"Already received as message {outcome.duplicate_of}; kept as {outcome.message_id}, not processed again."
            if outcome.is_duplicate
            else f"Stored as message {outcome.message_id}."
        )
        response: dict[str, Any] = {
            "status": "200 OK" if outcome.is_duplicate else "201 Created",
            "outcome": operation_outcome([Issue("informational", note, severity="information")]),
        }
        if resource.get("id"):
            response["location"] = f"{resource['resourceType']}/{resource['id']}"
        answers.append({"response": response})
    body = {"resourceType": "Bundle", "type": f"{checked.data.get('type')}-response", "entry": answers}
    headers = {"X-HealthSync-Messages": ",".join(str(o.message_id) for o in outcomes)}
    return _reply(200, body, headers)


def _reject(connector: Connector, raw: bytes, sender: str, error: FhirInputError) -> HttpResponse:
    data: Any = {}
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        data = json.loads(raw)
    item = InboundItem(
        connector_id=connector.pk,
        raw=raw,
        sender=sender,
        control_id=str(data.get("id") or "") if isinstance(data, dict) else "",
        message_type=message_type_for(data) if isinstance(data, dict) else "",
        lane=connector.lane,
        status=MessageStatus.REJECTED,
        error=str(error)[:4000],
    )
    headers: dict[str, str] = {}
    try:
        (outcome,) = store_messages([item])
        headers["X-HealthSync-Message"] = str(outcome.message_id)
    except DatabaseError:
        logger.exception("fhir inbound: could not keep a rejected message for connector %s", connector.pk)
    logger.info("fhir inbound: rejected a body for connector %s (%d issues)", connector.pk, len(error.issues))
    return _reply(error.status, operation_outcome(error.issues), headers)


def _accepted(
    request: HttpRequest, connector: Connector, checked: Checked, outcome: StoreOutcome
) -> HttpResponse:
    duplicate = outcome.is_duplicate
    note = (
        f"Already received as message {outcome.duplicate_of}; kept as {outcome.message_id}, not processed again."
        if duplicate
        else f"Stored as message {outcome.message_id}."
    )
    headers = {"X-HealthSync-Message": str(outcome.message_id)}
    outcome_body = operation_outcome([Issue("informational", note, severity="information")])
    if checked.resource_id:
        headers["Location"] = request.build_absolute_uri(
            f"/fhir/{connector.code}/{checked.resource_type}/{checked.resource_id}"
        )
    return _reply(200 if duplicate else 201, outcome_body, headers)
