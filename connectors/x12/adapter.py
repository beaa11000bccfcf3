"""X12 adapter: claims out as 837I/837P (validated by pyx12 before they leave), payer answers in.

Outbound config::

    {
      "transport": "http",                        # or "file": drop the 837 through a files connector config
      "url": "http://127.0.0.1:8101/x12/837",     # http: POST the 837, the answer is a 999
      "file": {...},                              # file: a connectors.files outbound config (folder or sftp)
      "claim_type": "837I",                       # or 837P
      "x12": {"sender_id": "HEALTHSYNC", "receiver_id": "RCMSIM", "usage": "T", "billing_provider": {...}}
    }

Inbound (a files or HTTP connector of protocol x12) stores each interchange as one Message; `parse()` gives
the mapping engine an X12Document (paths like ``CLP[*]-1``), and `connectors.x12.events.x12_events(raw)`
turns a 999, 277CA or 835 into canonical-event dicts (several per interchange: one per claim).

Control numbers: ISA13/GS06 = the delivery's id (mod 10^9), so a retry resends the same interchange and
the receiver's duplicate check holds.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx

from connectors.x12.build import VERSIONS, Envelope, X12BuildError, build_837, validate_envelope_config
from connectors.x12.events import x12_events
from connectors.x12.reader import X12Document, X12ParseError, parse
from connectors.x12.validate import validate_x12
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.registry import SendResult

if TYPE_CHECKING:
    from healthsync.models import Connector, Delivery

TRANSPORTS = ("http", "file")


def interchange_for(connector: Connector, delivery: Delivery) -> str:
    """The 837 this delivery sends: built from its payload, with its id as control number."""
    config = connector.config or {}
    kind = str(config.get("claim_type") or "837I")
    try:
        return build_837(
            claim_for(connector, delivery),
            kind=kind,
            envelope=Envelope.from_config(config.get("x12") or {}),
            control_number=(delivery.pk or 1) % 1_000_000_000 or 1,
        )
    except X12BuildError as exc:
        raise ConnectorError(f"The claim cannot become an {kind}: {exc.message}", permanent=True) from None


def claim_for(connector: Connector, delivery: Delivery) -> dict[str, Any]:
    """The delivery's claim; a replacement or void gets the payer's ICN of the claim it replaces (REF*F8).

    The workflow names the original by its own claim id (over X12: our batch id, which payers never echo), so
    the ICN comes from the payer's answers (277CA/835, selectors.payer_claim_control_number). Not known yet
    (the 277CA has not come): a transient error, so the delivery retries once the answer is in.
    """
    claim = dict(delivery.payload or {})
    if str(claim.get("claim_frequency") or "1") not in ("7", "8") or claim.get("payer_claim_control_number"):
        return claim
    from connectors.x12.selectors import payer_claim_control_number

    pcn = str(claim.get("patient_control_number") or "")
    source = connector.system.code if connector.system_id else ""
    icn = payer_claim_control_number(pcn, source=source)
    if not icn:
        what = "void" if claim.get("claim_frequency") == "8" else "replacement"
        raise ConnectorError(
            f"The {what} of claim {pcn} waits for the payer's claim control number (its 277CA or 835)"
        )
    claim["payer_claim_control_number"] = icn
    return claim


class X12Adapter:
    protocol = Protocol.X12

    def validate_config(self, direction: str, config: dict[str, Any]) -> list[str]:
        errors = validate_envelope_config(config.get("x12"))
        if direction != Direction.OUTBOUND:
            if "source" in config:
                from connectors.files.poller import validate_source_config

                errors += validate_source_config(config, Protocol.X12)
            return errors
        if config.get("claim_type", "837I") not in VERSIONS:
            errors.append("claim_type must be 837I or 837P")
        transport = config.get("transport", "http")
        if transport not in TRANSPORTS:
            errors.append("transport must be http or file")
        elif transport == "http":
            url = urlparse(str(config.get("url") or ""))
            if url.scheme not in ("http", "https") or not url.netloc:
                errors.append("url must be an http:// or https:// URL that accepts 837s")
        else:
            from connectors.files.adapter import validate_destination

            file_config = config.get("file")
            if not isinstance(file_config, dict):
                errors.append("file must be a folder or sftp destination")
            else:
                errors += [f"file.{e}" for e in validate_destination(file_config)]
        return errors

    def parse(self, raw: bytes) -> X12Document:
        return parse(raw)

    def events(self, raw: bytes) -> list[dict[str, Any]]:
        """Canonical-event dicts for a payer answer (999, 277CA, 835); see connectors.x12.events."""
        return x12_events(raw)

    def send(self, connector: Connector, delivery: Delivery) -> SendResult:
        text = interchange_for(connector, delivery)
        checked = validate_x12(text)
        if not checked.ok:
            # Our own builder wrote something the implementation guide forbids: a bug or bad claim data.
            raise ConnectorError(f"The 837 fails validation: {checked.summary()}", permanent=True)
        doc = parse(text)
        control = doc.header.control_id
        replaces = next((s.el(2) for s in doc.all("REF") if s.el(1) == "F8"), "")
        config = connector.config or {}
        if config.get("transport", "http") == "file":
            from connectors.files.adapter import write_file
            from connectors.files.transport import connector_secrets

            name = f"{delivery.business_key or 'claim'}-{control}.x12"
            where = write_file(
                config["file"],
                name,
                text.encode("latin-1"),
                timeout=connector.timeout_seconds,
                secrets=connector_secrets(connector),
            )
            response = {"file": where, "interchange": control}
            result = SendResult(response=response, external_id=control)
        else:
            result = _post(connector, delivery, text, control)
        if replaces:
            # The ICN this claim took back: a later void must not name it again (selectors).
            result.response["replaces_icn"] = replaces
        return result

    def test_connection(self, connector: Connector) -> tuple[bool, str]:
        """Outbound http: does the clearinghouse's host accept connections (nothing is posted); a file drop or
        an inbound pickup: the files connector's own test (list the folder or SFTP directory)."""
        config = connector.config or {}
        if connector.direction == Direction.INBOUND:
            from connectors.files.adapter import FilesAdapter

            return FilesAdapter().test_connection(connector)
        if config.get("transport", "http") == "file":
            from connectors.files.adapter import check_location

            return check_location(
                connector, (config.get("file") or {}).get("destination"), missing="no valid file destination"
            )
        url = urlparse(str(config.get("url") or ""))
        if url.scheme not in ("http", "https") or not url.hostname:
            return False, "The connector has no http:// or https:// URL"
        port = url.port or (443 if url.scheme == "https" else 80)
        where = f"{url.hostname}:{port}"
        try:
            with socket.create_connection((url.hostname, port), timeout=min(connector.timeout_seconds, 10)):
                pass
        except OSError as exc:
            return False, f"The clearinghouse at {where} does not accept connections ({exc.strerror or exc})"
        return True, f"The clearinghouse at {where} accepts connections"


def _post(connector: Connector, delivery: Delivery, text: str, control: str) -> SendResult:
    config = connector.config or {}
    try:
        response = httpx.post(
            str(config["url"]),
            content=text.encode("latin-1"),
            headers={"Content-Type": "application/edi-x12", "Idempotency-Key": delivery.idempotency_key},
            timeout=connector.timeout_seconds,
        )
    except httpx.TimeoutException:
        raise ConnectorError(
            f"{connector.code} did not answer within {connector.timeout_seconds:g}s"
        ) from None
    except httpx.HTTPError as exc:
        raise ConnectorError(f"{connector.code} is unreachable: {type(exc).__name__}") from None
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise ConnectorError(f"HTTP {response.status_code} from {connector.code}")
    body = response.text
    if not body.lstrip().startswith("ISA"):
        raise ConnectorError(
            f"HTTP {response.status_code} from {connector.code}: {body[:300]}",
            permanent=400 <= response.status_code < 500,
        )
    try:
        events = x12_events(body)
    except X12ParseError as exc:
        raise ConnectorError(f"{connector.code} answered an unreadable 999: {exc.message}") from None
    batch = response.headers.get("X-Batch-Id", "")
    result = {
        "interchange": control,
        "batch": batch,
        "ack": [e["data"].get("ack_code") for e in events],
        "999": body,
    }
    if not events or any(e["type"] == "claim.rejected" for e in events):
        reasons = "; ".join(r for e in events for r in e["data"].get("reasons", [])) or "no acknowledgement"
        raise ConnectorError(f"The 837 was rejected (999): {reasons}", permanent=True, response=result)
    return SendResult(response=result, external_id=batch or control)
