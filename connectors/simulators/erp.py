"""A reference ERP journal-entry API for tests and the demo: a real HTTP server on a real socket.

    sim = ErpSimulator("127.0.0.1", 0).start()
    POST {sim.url}/journal-entries → 201 {"document_number": "JE-2026-000001"}
        400 problem+json when the lines do not balance (debits ≠ credits) or fields are missing
        409 {"detail": "duplicate external reference", "document_number": existing} for a reused
            external_reference, as ERPs reject a duplicate reference instead of posting twice
    GET  {sim.url}/journal-entries → 200 {"journal_entries": [...]}
    POST {sim.url}/ap-invoices → 201 {"document_number": "APINV-2026-000001"}; 409 with the existing document
        number for a reused external_reference; 409 problem (no document number) for the same supplier invoice
        number under another reference, as Oracle and Workday reject duplicate supplier invoices
    POST {sim.url}/purchase-orders → 201 {"document_number": "PO-2026-000001"}; 409 on a reused reference
    POST {sim.url}/reimbursement-forecasts → 201 {"document_number": "FC-2026-000001"}: an expected-reimbursement
        forecast (kind "forecast"), or a "true_up" / "reversal" of one named by forecast_reference (400 when
        that forecast is unknown); 409 with the existing document number for a reused external_reference
    sim.stop()

`sim.entries` holds the posted entries by document number, `sim.forecasts` the forecast documents;
`sim.requests` counts requests per path.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any

from connectors.simulators.http_base import JsonSimulator, Reply, problem


class ErpSimulator(JsonSimulator):
    """Posts balanced journal entries once per external reference."""

    name = "erp-simulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.entries: dict[str, dict[str, Any]] = {}
        self._by_reference: dict[str, str] = {}
        self._sequence = 0
        self.invoices: dict[str, dict[str, Any]] = {}
        self.purchase_orders: dict[str, dict[str, Any]] = {}
        self._documents_by_reference: dict[str, str] = {}
        self._invoice_numbers: dict[tuple[str, str], str] = {}
        self._doc_sequence = 0
        self.forecasts: dict[str, dict[str, Any]] = {}

    @property
    def entry_count(self) -> int:
        return len(self.entries)

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if path.rstrip("/") == "/reimbursement-forecasts":
            return self._forecast(method, body)
        if path.rstrip("/") in ("/ap-invoices", "/purchase-orders"):
            return self._document(method, path.rstrip("/"), body)
        if path.rstrip("/") != "/journal-entries":
            return super().handle(method, path, headers, body)
        if method == "GET":
            with self.lock:
                return HTTPStatus.OK, {"journal_entries": list(self.entries.values())}
        errors = validate_journal(body)
        if errors:
            return HTTPStatus.BAD_REQUEST, problem(
                "Invalid journal entry", "; ".join(errors), 400, errors=errors
            )
        reference = str(body["external_reference"])
        with self.lock:
            if reference in self._by_reference:
                return HTTPStatus.CONFLICT, {
                    "detail": "duplicate external reference",
                    "document_number": self._by_reference[reference],
                }
            self._sequence += 1
            number = f"JE-{date.today().year}-{self._sequence:06d}"
            self.entries[number] = {"document_number": number, "entry": body}
            self._by_reference[reference] = number
        return HTTPStatus.CREATED, {"document_number": number}

    def _document(self, method: str, path: str, body: Any) -> Reply:
        store = self.invoices if path == "/ap-invoices" else self.purchase_orders
        key = "invoices" if path == "/ap-invoices" else "purchase_orders"
        if method == "GET":
            with self.lock:
                return HTTPStatus.OK, {key: list(store.values())}
        errors = validate_document(path, body)
        if errors:
            return HTTPStatus.BAD_REQUEST, problem("Invalid document", "; ".join(errors), 400, errors=errors)
        reference = str(body["external_reference"])
        with self.lock:
            if reference in self._documents_by_reference:
                return HTTPStatus.CONFLICT, {
                    "detail": "duplicate external reference",
                    "document_number": self._documents_by_reference[reference],
                }
            if path == "/ap-invoices":
                number_key = (str(body["supplier"]), str(body["invoice_number"]))
                if number_key in self._invoice_numbers:
                    return HTTPStatus.CONFLICT, problem(
                        "Duplicate supplier invoice",
                        f"Invoice {number_key[1]} of supplier {number_key[0]} is already posted "
                        f"as {self._invoice_numbers[number_key]}.",
                        409,
                    )
            self._doc_sequence += 1
            prefix = "APINV" if path == "/ap-invoices" else "PO"
            number = f"{prefix}-{date.today().year}-{self._doc_sequence:06d}"
            store[number] = {"document_number": number, "document": body}
            self._documents_by_reference[reference] = number
            if path == "/ap-invoices":
                self._invoice_numbers[(str(body["supplier"]), str(body["invoice_number"]))] = number
        return HTTPStatus.CREATED, {"document_number": number}

    def _forecast(self, method: str, body: Any) -> Reply:
        if method == "GET":
            with self.lock:
                return HTTPStatus.OK, {"forecasts": list(self.forecasts.values())}
        errors = validate_forecast(body)
        if errors:
            return HTTPStatus.BAD_REQUEST, problem("Invalid forecast", "; ".join(errors), 400, errors=errors)
        reference = str(body["external_reference"])
        with self.lock:
            if reference in self._documents_by_reference:
                return HTTPStatus.CONFLICT, {
                    "detail": "duplicate external reference",
                    "document_number": self._documents_by_reference[reference],
                }
            kind = body.get("kind", "forecast")
            if kind != "forecast" and str(body.get("forecast_reference")) not in self._documents_by_reference:
                return HTTPStatus.BAD_REQUEST, problem(
                    "Unknown forecast",
                    f"A {kind} must name a posted forecast; {body.get('forecast_reference')!r} is unknown.",
                    400,
                )
            self._doc_sequence += 1
            number = f"FC-{date.today().year}-{self._doc_sequence:06d}"
            self.forecasts[number] = {"document_number": number, "forecast": body}
            self._documents_by_reference[reference] = number
        return HTTPStatus.CREATED, {"document_number": number}


FORECAST_KINDS = ("forecast", "true_up", "reversal")


def validate_forecast(body: Any) -> list[str]:
    """What is wrong with an expected-reimbursement forecast document."""
    if not isinstance(body, dict):
        return ["the forecast must be a JSON object"]
    errors = [
        f"{name} is required" for name in ("external_reference", "amount") if body.get(name) in (None, "")
    ]
    kind = body.get("kind", "forecast")
    if kind not in FORECAST_KINDS:
        errors.append(f"kind must be one of {', '.join(FORECAST_KINDS)}")
    elif kind != "forecast" and not body.get("forecast_reference"):
        errors.append(f"a {kind} needs forecast_reference")
    if not errors:
        try:
            Decimal(str(body["amount"]))
        except InvalidOperation:
            errors.append("amount must be a decimal amount")
    return errors


def validate_document(path: str, body: Any) -> list[str]:
    """What is missing from an AP invoice or a purchase order."""
    if not isinstance(body, dict):
        return ["the document must be a JSON object"]
    required = ("external_reference", "supplier", "invoice_number", "amount")
    if path == "/purchase-orders":
        required = ("external_reference", "supplier", "po_number", "lines")
    errors = [f"{name} is required" for name in required if body.get(name) in (None, "", [])]
    if "amount" in required and not errors:
        try:
            Decimal(str(body["amount"]))
        except InvalidOperation:
            errors.append("amount must be a decimal amount")
    return errors


def validate_journal(body: Any) -> list[str]:
    """What is wrong with a journal entry: missing fields, bad amounts, or debits that do not equal credits."""
    if not isinstance(body, dict):
        return ["the journal entry must be a JSON object"]
    errors = []
    if not body.get("external_reference"):
        errors.append("external_reference is required")
    lines = body.get("lines")
    if not isinstance(lines, list) or len(lines) < 2:
        return [*errors, "lines must hold at least two journal lines"]
    debit_total = credit_total = Decimal(0)
    for index, line in enumerate(lines, start=1):
        if not isinstance(line, dict) or not line.get("account"):
            errors.append(f"line {index}: account is required")
            continue
        try:
            debit = Decimal(str(line.get("debit") or "0"))
            credit = Decimal(str(line.get("credit") or "0"))
        except InvalidOperation:
            errors.append(f"line {index}: debit and credit must be decimal amounts")
            continue
        if debit < 0 or credit < 0:
            errors.append(f"line {index}: amounts must not be negative")
        debit_total += debit
        credit_total += credit
    if not errors and debit_total != credit_total:
        errors.append(f"the entry does not balance: debits {debit_total} ≠ credits {credit_total}")
    if not errors and debit_total == 0:
        errors.append("the entry posts no amount")
    return errors


def main() -> None:  # pragma: no cover - manual use: python -m connectors.simulators.erp
    import os

    ErpSimulator("127.0.0.1", int(os.getenv("PORT", "8102"))).serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
