"""A reference revenue-cycle (RCM) claims API for tests and the demo: a real HTTP server on a real socket.

    sim = RcmSimulator("127.0.0.1", 0).start()   # port 0: a free port; sim.port / sim.url tell which
    POST {sim.url}/claims   → 201 {"claim_id": "CLM-000001", "status": "accepted"}
                              400 problem+json when required claim fields are missing
                              same Idempotency-Key again → 200 with the same claim, no second claim
    GET  {sim.url}/claims   → 200 {"claims": [...]}
    sim.stop()

`sim.claims` holds the accepted claims by id, `sim.requests` counts requests per "METHOD /path", and
`sim.forced_status = 503` makes every POST fail (for drills). `sim.serve_forever()` blocks (for a command).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any

from connectors.simulators.http_base import JsonSimulator, Reply, problem

REQUIRED_FIELDS = ("patient_control_number", "payer.id", "diagnoses", "total_charges")


class RcmSimulator(JsonSimulator):
    """Accepts claims, deduplicating on the Idempotency-Key header as a real claims API would."""

    name = "rcm-simulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.claims: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, str] = {}
        self._sequence = 0

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
            self._sequence += 1
            claim_id = f"CLM-{self._sequence:06d}"
            claim = {"claim_id": claim_id, "status": "accepted", "idempotency_key": key, "claim": body}
            self.claims[claim_id] = claim
            if key:
                self._by_key[key] = claim_id
        return HTTPStatus.CREATED, {"claim_id": claim_id, "status": "accepted"}


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
