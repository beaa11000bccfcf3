"""Outbound FHIR over httpx: idempotent create (If-None-Exist), update, and polling a server for changes.

Polling asks ``GET [base]/<Type>?_lastUpdated=gt<high water mark>&_sort=_lastUpdated`` and follows
``Bundle.link[next]``; every resource becomes an inbound Message (control id ``<id>/_history/<version>``, so a
re-poll of the same version is a duplicate and a new version is new). The high water mark is the newest
``meta.lastUpdated`` among the messages already stored for the connector, so no extra state is kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connectors.fhir.resources import message_type_for
from connectors.rest.auth import request as auth_request
from healthsync.errors import ConnectorError

if TYPE_CHECKING:
    import httpx

    from healthsync.models import Connector

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
TRANSIENT = {408, 425, 429}
MAX_PAGES = 100  # per resource type and poll: a runaway next link must not keep the worker forever


@dataclass(frozen=True)
class FhirReply:
    """A FHIR server's answer to a write: status, the resource (when returned) and its id."""

    status: int
    resource: dict[str, Any]
    resource_id: str
    created: bool


def _base(connector: Connector) -> str:
    return str((connector.config or {}).get("base_url", "")).rstrip("/")


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"text": response.text[:2000]} if response.text else {}
    return body if isinstance(body, dict) else {"data": body}


def _problem(connector: Connector, response: httpx.Response, body: dict[str, Any]) -> ConnectorError:
    issues = body.get("issue") if body.get("resourceType") == "OperationOutcome" else None
    detail = "; ".join(
        str(i.get("diagnostics") or i.get("code") or "") for i in (issues or []) if isinstance(i, dict)
    )
    message = f"HTTP {response.status_code} from {connector.code}" + (f": {detail}" if detail else "")
    permanent = 400 <= response.status_code < 500 and response.status_code not in TRANSIENT
    return ConnectorError(message, permanent=permanent, response=body)


def _id_from(response: httpx.Response, body: dict[str, Any]) -> str:
    if body.get("id"):
        return str(body["id"])
    # Location: [base]/<Type>/<id>/_history/<vid> when the server returns no body (Prefer: return=minimal).
    parts = [p for p in urlsplit(response.headers.get("location", "")).path.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if len(parts) >= 2 else ""


def identifier_condition(resource: dict[str, Any], system: str = "") -> str:
    """``identifier=system|value`` for If-None-Exist: the identifier of `system`, else the first one."""
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value") and (not system or ident.get("system") == system):
            prefix = f"{ident['system']}|" if ident.get("system") else ""
            return f"identifier={prefix}{ident['value']}"
    return ""


def create(
    connector: Connector,
    resource: dict[str, Any],
    *,
    if_none_exist: str = "",
    headers: dict[str, str] | None = None,
) -> FhirReply:
    """POST the resource; with `if_none_exist` the server returns the existing match instead of a copy."""
    resource_type = str(resource.get("resourceType") or "")
    if not resource_type:
        raise ConnectorError("The payload is not a FHIR resource (no resourceType)", permanent=True)
    sent = {
        "Content-Type": FHIR_JSON,
        "Accept": FHIR_JSON,
        "Prefer": "return=representation",
        **(headers or {}),
    }
    if if_none_exist:
        sent["If-None-Exist"] = if_none_exist
    response = auth_request(
        connector, "POST", f"{_base(connector)}/{resource_type}", content=json.dumps(resource), headers=sent
    )
    body = _body(response)
    if not response.is_success:
        raise _problem(connector, response, body)
    return FhirReply(response.status_code, body, _id_from(response, body), response.status_code == 201)


def update(
    connector: Connector, resource: dict[str, Any], *, headers: dict[str, str] | None = None
) -> FhirReply:
    """PUT the resource at its id (update, or create-on-update when the server allows it)."""
    resource_type = str(resource.get("resourceType") or "")
    resource_id = str(resource.get("id") or "")
    if not resource_type or not resource_id:
        raise ConnectorError("An update needs a resource with resourceType and id", permanent=True)
    sent = {
        "Content-Type": FHIR_JSON,
        "Accept": FHIR_JSON,
        "Prefer": "return=representation",
        **(headers or {}),
    }
    response = auth_request(
        connector,
        "PUT",
        f"{_base(connector)}/{resource_type}/{resource_id}",
        content=json.dumps(resource),
        headers=sent,
    )
    body = _body(response)
    if not response.is_success:
        raise _problem(connector, response, body)
    return FhirReply(
        response.status_code, body, _id_from(response, body) or resource_id, response.status_code == 201
    )


def search_pages(connector: Connector, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every resource a search returns, following Bundle.link[next] (at most MAX_PAGES pages)."""
    url: str | None = f"{_base(connector)}/{resource_type}"
    query: dict[str, str] | None = params
    found: list[dict[str, Any]] = []
    for _page in range(MAX_PAGES):
        if url is None:
            break
        response = auth_request(connector, "GET", url, params=query, headers={"Accept": FHIR_JSON})
        body = _body(response)
        if not response.is_success:
            raise _problem(connector, response, body)
        if body.get("resourceType") != "Bundle":
            raise ConnectorError(f"{connector.code}: a search did not answer with a Bundle", permanent=True)
        for entry in body.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                found.append(resource)
        url = next(
            (str(link.get("url")) for link in body.get("link") or [] if link.get("relation") == "next"), None
        )
        query = None  # the next link carries the whole query
    else:
        logger.warning("fhir poll: %s stopped after %d pages", connector.code, MAX_PAGES)
    return found


@dataclass(frozen=True)
class PollResult:
    """What one poll stored: new messages, duplicates (versions seen before), and the new high water mark."""

    stored: int
    duplicates: int
    high_water_mark: str


def high_water_mark(connector: Connector, resource_type: str) -> str:
    """The newest meta.lastUpdated among the messages already polled for `resource_type`."""
    from django.db.models import Q

    from healthsync.models import Message

    newest = ""
    same_type = Q(message_type=resource_type) | Q(message_type__startswith=f"{resource_type}/")
    recent = (
        Message.objects.filter(same_type, connector=connector)
        .order_by("-id")
        .values_list("raw", flat=True)[:50]
    )
    for raw in recent:
        try:
            updated = str(json.loads(bytes(raw)).get("meta", {}).get("lastUpdated") or "")
        except (ValueError, AttributeError):
            continue
        newest = max(newest, updated)
    return newest


def poll(connector: Connector) -> PollResult:
    """Fetch what changed since the high water mark, for each configured type, and store it as messages."""
    from healthsync.ingest import InboundItem, store_messages

    config = (connector.config or {}).get("poll") or {}
    sender = urlsplit(_base(connector)).netloc
    stored = duplicates = 0
    newest = ""
    for resource_type in config.get("resource_types") or []:
        mark = high_water_mark(connector, resource_type)
        params = {"_sort": "_lastUpdated", "_count": str(config.get("page_size") or 50)}
        if mark:
            params["_lastUpdated"] = f"gt{mark}"
        resources = search_pages(connector, resource_type, params)
        items = []
        for resource in resources:
            meta = resource.get("meta") or {}
            control_id = f"{resource.get('id', '')}/_history/{meta.get('versionId', '')}"
            items.append(
                InboundItem(
                    connector_id=connector.pk,
                    raw=json.dumps(resource, separators=(",", ":")).encode(),
                    sender=sender,
                    control_id=control_id,
                    message_type=message_type_for(resource),
                    lane=connector.lane,
                )
            )
            newest = max(newest, str(meta.get("lastUpdated") or ""))
        for outcome in store_messages(items):
            if outcome.is_duplicate:
                duplicates += 1
            else:
                stored += 1
    logger.info("fhir poll: %s stored %d, duplicates %d", connector.code, stored, duplicates)
    return PollResult(stored, duplicates, newest)
