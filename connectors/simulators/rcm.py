"""A reference revenue-cycle (RCM) claims API for tests and the demo: a real HTTP server on a real socket.

    sim = RcmSimulator("127.0.0.1", 0).start()   # port 0: a free port; sim.port / sim.url tell which
    POST {sim.url}/claims   → 201 {"claim_id": "CLM-000001", "status": "accepted"}
                              400 problem+json when required claim fields are missing
                              same Idempotency-Key again → 200 with the same claim, no second claim
                              claim_frequency "8" with original_claim_id voids that claim (its status
                              becomes "voided"; 201 {"claim_id": ..., "status": "voided"}); 409 problem when
                              the original is unknown or already voided
    GET  {sim.url}/claims   → 200 {"claims": [...]}
    sim.stop()

`sim.claims` holds the accepted claims by id, `sim.requests` counts requests per "METHOD /path", and
`sim.forced_status = 503` makes every POST fail (for drills). `sim.serve_forever()` blocks (for a command).

X12 (bodies are X12 text, not JSON):

    POST {sim.url}/x12/837          → 200, body = the 999 pyx12 writes (IK5 A or R with IK3/IK4 errors),
                                      header X-Batch-Id; the same Idempotency-Key (or ISA13) again → same batch
                                      400 text when the body is not X12 at all
    GET  {sim.url}/x12/277ca/<batch> → 200 the 277CA of an accepted batch (A2:20 per claim; A7:21 for payers
                                      in `sim.rejected_payers`), 404 otherwise
    GET  {sim.url}/x12/835          → 200 one 835 for every accepted claim not yet remitted (then remitted),
                                      204 when there is none; GET /x12/835/<n> fetches remittance n again

Denials are deterministic: claims of payers in `sim.denied_payers` and one claim in ten by a hash of its
patient control number are denied (zero pay, CAS CO-50); the rest are paid 80% (CO-45 15%, PR-2 5%).

The payer mailbox (a clearinghouse drops its answers as files; HealthSync picks them up with an inbound X12
files connector): with `RcmSimulator(mailbox="/dir")` (or an sftp location dict plus `mailbox_secrets`) the
277CA of every accepted 837 batch is dropped there as ``277ca-<batch>.x12``, and `sim.remit()` (GET /x12/835,
or `simulate_rcm --remit-every N`) drops its 835 as ``835-<trace>.x12``. Each file is written under a
temporary dot-name and renamed, so a poller never reads half a file. A drop that fails (SFTP down) is kept
and tried again with the next one.

Replacements and voids (CLM05-3 7 or 8) name the original by its ICN in REF*F8. A void of a known claim voids
it: not yet remitted, it is never paid; already paid, the next 835 reverses it (CLP02 22). The void itself is
acknowledged (A2:20) without an ICN of its own, since nothing will be paid on it. A replacement or void whose
REF*F8 names no claim this payer holds (or one already voided) is rejected in the 277CA (A7:21).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from connectors.simulators.http_base import JsonSimulator, Reply, problem

logger = logging.getLogger(__name__)

X12_PREFIX = "/x12/"

REQUIRED_FIELDS = ("patient_control_number", "payer.id", "diagnoses", "total_charges")


class RcmSimulator(JsonSimulator):
    """Accepts claims, deduplicating on the Idempotency-Key header as a real claims API would."""

    name = "rcm-simulator"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mailbox: dict[str, Any] | str | None = None,
        mailbox_secrets: dict[str, str] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.mailbox = PayerMailbox(mailbox, secrets=mailbox_secrets) if mailbox else None
        self.claims: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, str] = {}
        self._sequence = 0
        # X12 side: batches by id, their claims, remittances served, and the payers to reject or deny.
        self.batches: dict[str, dict[str, Any]] = {}
        self._batch_by_key: dict[str, str] = {}
        self.remittances: list[str] = []
        self.rejected_payers: set[str] = set()
        self.denied_payers: set[str] = {"DENY01"}
        self.deny_one_in = 10
        self._control = itertools.count(1)
        # Paid claims a later void took back: the next 835 reverses them.
        self._reversals: list[dict[str, Any]] = []

    @property
    def claim_count(self) -> int:
        return len(self.claims)

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if path.rstrip("/") != "/claims":
            return super().handle(method, path, headers, body)
        if method == "GET":
            with self.lock:
                return HTTPStatus.OK, {"claims": list(self.claims.values())}
        errors = validate_claim(body)
        if errors:
            return HTTPStatus.BAD_REQUEST, problem(
                "Invalid claim",
                "The claim is missing required data: " + ", ".join(errors),
                400,
                errors=errors,
            )
        key = headers.get("idempotency-key", "")
        with self.lock:
            if key and key in self._by_key:
                return HTTPStatus.OK, self.claims[self._by_key[key]]
            status = "accepted"
            if str(body.get("claim_frequency")) == "8":
                original = self.claims.get(str(body.get("original_claim_id") or ""))
                if original is None or original["status"] == "voided":
                    return HTTPStatus.CONFLICT, problem(
                        "Cannot void",
                        f"Claim {body.get('original_claim_id')!r} is unknown or already voided.",
                        409,
                    )
                original["status"] = status = "voided"
            self._sequence += 1
            claim_id = f"CLM-{self._sequence:06d}"
            claim = {"claim_id": claim_id, "status": status, "idempotency_key": key, "claim": body}
            self.claims[claim_id] = claim
            if key:
                self._by_key[key] = claim_id
        return HTTPStatus.CREATED, {"claim_id": claim_id, "status": status}

    # X12 ---------------------------------------------------------------------------------------------------

    def handle_x12(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, dict]:
        """(status, X12 or plain text, extra headers) for the /x12/ routes."""
        parts = [p for p in path[len(X12_PREFIX) :].split("/") if p]
        if method == "POST" and parts == ["837"]:
            return self._receive_837(headers, body)
        if method == "GET" and len(parts) == 2 and parts[0] == "277ca":
            with self.lock:
                batch = self.batches.get(parts[1])
            if batch is None or not batch["accepted"]:
                return HTTPStatus.NOT_FOUND, f"No accepted batch {parts[1]}", {}
            return HTTPStatus.OK, batch["277ca"], {}
        if method == "GET" and parts == ["835"]:
            return self._remit()
        if method == "GET" and len(parts) == 2 and parts[0] == "835" and parts[1].isdigit():
            index = int(parts[1]) - 1
            with self.lock:
                found = self.remittances[index] if 0 <= index < len(self.remittances) else None
            if found is None:
                return HTTPStatus.NOT_FOUND, f"No remittance {parts[1]}", {}
            return HTTPStatus.OK, found, {}
        return HTTPStatus.NOT_FOUND, f"No X12 resource at {path}", {}

    def _receive_837(self, headers: dict[str, str], body: bytes) -> tuple[int, str, dict]:
        from connectors.x12.payer import build_277ca
        from connectors.x12.reader import X12ParseError, parse
        from connectors.x12.validate import validate_x12

        text = body.decode("latin-1")
        try:
            doc = parse(text)
        except X12ParseError as exc:
            return HTTPStatus.BAD_REQUEST, f"Not an X12 interchange: {exc.message}", {}
        key = headers.get("idempotency-key") or f"{doc.header.sender}:{doc.header.control_id}"
        with self.lock:
            known = self._batch_by_key.get(key)
            if known:
                return HTTPStatus.OK, self.batches[known]["999"], {"X-Batch-Id": known}
        checked = validate_x12(text)
        claims = _claims_of(doc)
        with self.lock:
            batch_id = f"B{len(self.batches) + 1:06d}"
            batch: dict[str, Any] = {"999": checked.ack_999, "accepted": checked.ok, "claims": claims}
            if checked.ok:
                for number, claim in enumerate(claims, start=1):
                    claim["icn"] = f"ICN{batch_id[1:]}{number:03d}"
                    claim["remitted"] = False
                    claim["accepted"] = claim["payer_id"] not in self.rejected_payers
                    if claim["accepted"] and claim["frequency"] in ("7", "8"):
                        self._replace(claim)
                batch["277ca"] = build_277ca(claims, control_number=next(self._control), batch_ref=batch_id)
            self.batches[batch_id] = batch
            self._batch_by_key[key] = batch_id
        if checked.ok and self.mailbox is not None:
            self.mailbox.drop(f"277ca-{batch_id}.x12", batch["277ca"])
        return HTTPStatus.OK, checked.ack_999, {"X-Batch-Id": batch_id}

    def _replace(self, claim: dict[str, Any]) -> None:
        """A replacement (7) or void (8): take the original out of adjudication, or reject the claim."""
        original = next(
            (
                c
                for b in self.batches.values()
                for c in b["claims"]
                if c.get("accepted") and c.get("icn") and c["icn"] == claim["original_icn"]
            ),
            None,
        )
        if original is None or original.get("voided"):
            claim["accepted"], claim["reason"] = False, "21"  # missing or invalid information
            return
        original["voided"] = True
        if original.get("remitted") and original.get("adjudicated"):
            self._reversals.append(_reversal(original["adjudicated"]))
        original["remitted"] = True  # never paid (again)
        if claim["frequency"] == "8":
            claim["icn"] = ""
            claim["remitted"] = True

    def remit(self) -> str | None:
        """One 835 for every accepted claim not yet remitted and every reversal due; None when there is none.

        With a mailbox, the 835 is also dropped there (and any earlier drop that failed is tried again)."""
        from connectors.x12.payer import build_835

        with self.lock:
            due = [
                claim
                for batch in self.batches.values()
                if batch["accepted"]
                for claim in batch["claims"]
                if claim["accepted"] and not claim["remitted"]
            ]
            reversals, self._reversals = self._reversals, []
            if not due and not reversals:
                text = None
            else:
                lines = reversals
                for claim in due:
                    claim["adjudicated"] = self._adjudicate(claim)
                    claim["remitted"] = True
                    lines.append(claim["adjudicated"])
                number = len(self.remittances) + 1
                text = build_835(lines, control_number=next(self._control), trace=f"TRC{number:07d}")
                self.remittances.append(text)
        if self.mailbox is not None:
            if text is not None:
                self.mailbox.drop(f"835-TRC{number:07d}.x12", text)
            else:
                self.mailbox.flush()
        return text

    def _remit(self) -> tuple[int, str, dict]:
        text = self.remit()
        if text is None:
            return HTTPStatus.NO_CONTENT, "", {}
        with self.lock:
            number = self.remittances.index(text) + 1
        return HTTPStatus.OK, text, {"X-Remittance": str(number)}

    def _adjudicate(self, claim: dict[str, Any]) -> dict[str, Any]:
        amount = Decimal(claim["amount"])
        digest = int(hashlib.sha256(claim["claim_id"].encode()).hexdigest(), 16)
        line = {**claim, "status": "1"}
        if claim["payer_id"] in self.denied_payers or (self.deny_one_in and digest % self.deny_one_in == 0):
            return line | {"paid": "0", "adjustments": [("CO", "50", amount)]}
        cents = Decimal("0.01")
        contractual = (amount * Decimal("0.15")).quantize(cents)
        patient = (amount * Decimal("0.05")).quantize(cents)
        paid = amount - contractual - patient
        return line | {
            "paid": paid,
            "patient_responsibility": patient,
            "adjustments": [("CO", "45", contractual), ("PR", "2", patient)],
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        base = super()._handler_class()
        simulator = self

        class Handler(base):  # type: ignore[valid-type,misc]
            def _x12(self, method: str) -> bool:
                path = self.path.split("?", 1)[0]
                if not path.startswith(X12_PREFIX):
                    return False
                with simulator.lock:
                    simulator.requests[f"{method} {path}"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if method != "GET" and simulator.forced_status is not None:
                    status, text, extra = simulator.forced_status, "The simulator was told to fail.", {}
                else:
                    headers = {key.lower(): value for key, value in self.headers.items()}
                    status, text, extra = simulator.handle_x12(method, path, headers, raw)
                data = text.encode("latin-1")
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/edi-x12" if text.startswith("ISA") else "text/plain"
                )
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return True

            def do_GET(self) -> None:
                if not self._x12("GET"):
                    super().do_GET()

            def do_POST(self) -> None:
                if not self._x12("POST"):
                    super().do_POST()

        return Handler


def _claims_of(doc: Any) -> list[dict[str, Any]]:
    """The claims of an 837: CLM01, CLM02, CLM05 (facility and frequency), REF*F8 (the original's ICN), the
    payer (NM1*PR) and the subscriber before them."""
    institutional = doc.all("GS")[0].el(8) == "005010X223A2" if doc.all("GS") else False
    claims: list[dict[str, Any]] = []
    payer_id = payer_name = member = name = ""
    for seg in doc.segments:
        if seg.id == "NM1" and seg.el(1) == "PR":
            payer_id, payer_name = seg.el(9), seg.el(3)
        elif seg.id == "NM1" and seg.el(1) == "IL":
            member, name = seg.el(9), f"{seg.el(4)} {seg.el(3)}".strip()
        elif seg.id == "CLM":
            frequency = seg.el(5, 3) or "1"
            claims.append(
                {
                    "claim_id": seg.el(1),
                    "amount": seg.el(2) or "0",
                    "payer_id": payer_id,
                    "payer_name": payer_name,
                    "member_id": member,
                    "name": name,
                    "frequency": frequency,
                    "facility_code": seg.el(5, 1),
                    "bill_type": f"{seg.el(5, 1)}{frequency}" if institutional else "",
                    "original_icn": "",
                }
            )
        elif seg.id == "REF" and seg.el(1) == "F8" and claims:
            claims[-1]["original_icn"] = seg.el(2)
    return claims


def _reversal(paid: dict[str, Any]) -> dict[str, Any]:
    """An 835 line taking back a paid claim (CLP02 22): every amount negated, the original's ICN."""

    def negated(value: Any) -> str:
        return str(-Decimal(str(value or 0)))

    return paid | {
        "status": "22",
        "amount": negated(paid["amount"]),
        "paid": negated(paid.get("paid")),
        "patient_responsibility": negated(paid.get("patient_responsibility")),
        "adjustments": [(group, reason, negated(amount)) for group, reason, amount in paid["adjustments"]],
    }


class PayerMailbox:
    """Where the payer's answers go as files: a local folder (created when missing) or an SFTP directory.

    Files are written atomically by the files connector's own transport (temporary dot-name, then rename), so a
    poller never takes half a file. A drop that fails is kept and tried again by the next drop or flush()."""

    def __init__(
        self, location: dict[str, Any] | str, *, secrets: dict[str, str] | None = None, timeout: float = 10.0
    ) -> None:
        from pathlib import Path

        if isinstance(location, str):
            location = {"type": "folder", "path": location}
        if location.get("type", "folder") == "folder":
            Path(location["path"]).mkdir(parents=True, exist_ok=True)
        self.location = location
        self.secrets = secrets
        self.timeout = timeout
        self.pending: list[tuple[str, str]] = []
        self.dropped: list[str] = []
        self._lock = threading.Lock()

    def drop(self, name: str, text: str) -> None:
        with self._lock:
            self.pending.append((name, text))
        self.flush()

    def flush(self) -> None:
        from connectors.files.transport import open_transport
        from healthsync.errors import ConnectorError

        with self._lock:
            if not self.pending:
                return
            try:
                with open_transport(self.location, timeout=self.timeout, secrets=self.secrets) as transport:
                    while self.pending:
                        name, text = self.pending[0]
                        transport.write(name, text.encode("latin-1"))
                        self.dropped.append(name)
                        self.pending.pop(0)
            except (ConnectorError, OSError) as exc:
                # The clearinghouse keeps the file and tries again; no PHI in the message.
                logger.warning("payer mailbox: %d file(s) not delivered yet: %s", len(self.pending), exc)


def validate_claim(body: Any) -> list[str]:
    """The names of required claim fields that are missing or malformed."""
    if not isinstance(body, dict):
        return ["claim (a JSON object)"]
    errors = []
    for dotted in REQUIRED_FIELDS:
        node: Any = body
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node in (None, "", [], {}):
            errors.append(dotted)
    total = body.get("total_charges")
    if total not in (None, ""):
        try:
            Decimal(str(total))
        except InvalidOperation:
            errors.append("total_charges (a decimal number)")
    return errors


def main() -> None:  # pragma: no cover - manual use: python -m connectors.simulators.rcm
    import os

    RcmSimulator("127.0.0.1", int(os.getenv("PORT", "8101"))).serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
