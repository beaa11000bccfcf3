"""JSON feeds: the source path reader the mapping engine uses, and an invoice mapped from JSON into procure-to-pay."""

from __future__ import annotations

import pytest

from connectors.json_message import JsonParseError, parse
from healthsync.mapping import apply_rules
from healthsync.models import MappingRule
from tests.workflows.support import emit, workflow_destinations
from workflows.models import WorkflowRun

INVOICE = b"""{"type": "ap_invoice", "id": "INV-9", "supplier": {"id": "MEDLINE"}, "po": "PO-77", "total": 70,
 "paid": false, "lines": [{"line": 1, "qty": "100", "price": "0.20"}, {"line": 2, "qty": "50"}]}"""


def test_the_reader_follows_dotted_paths_indexes_and_stars() -> None:
    message = parse(INVOICE)
    assert message.header.message_type == "ap_invoice" and message.header.control_id == "INV-9"
    assert message.get("supplier.id") == "MEDLINE"
    assert message.get("total") == "70" and message.get("paid") == "false"
    assert message.get("lines[2].qty") == "50"
    assert message.get("lines[3].qty") == "" and message.get("nothing.here") == ""
    assert message.get_all("lines[*].price") == ["0.20", ""]


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"\xff\xfe", "encoding"), (b"{not json", "syntax"), (b"[1, 2]", "not_object")],
)
def test_the_reader_rejects_bad_payloads_with_a_code(raw: bytes, code: str) -> None:
    with pytest.raises(JsonParseError) as caught:
        parse(raw)
    assert caught.value.code == code


def test_a_bad_path_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON path"):
        parse(INVOICE).get("lines[x]")


@pytest.mark.django_db
def test_mapping_rules_turn_a_json_invoice_into_the_event_procure_to_pay_reads() -> None:
    rules = [
        MappingRule(target="invoice_number", source="id", required=True),
        MappingRule(target="po_number", source="po", required=True),
        MappingRule(target="supplier", source="supplier.id"),
        MappingRule(target="amount", source="total", transform="decimal"),
        MappingRule(target="lines[].line", source="lines[*].line"),
        MappingRule(target="lines[].quantity", source="lines[*].qty"),
        MappingRule(target="lines[].unit_price", source="lines[*].price"),
    ]
    data = apply_rules(rules, parse(INVOICE)).event_data()
    assert data["invoice_number"] == "INV-9" and data["supplier"] == "MEDLINE"
    assert data["lines"][0] == {"line": "1", "quantity": "100", "unit_price": "0.20"}

    with workflow_destinations():
        emit("ap_invoice.received", data["po_number"], data, ref=data["invoice_number"], source="erp-main")
    run = WorkflowRun.objects.get(workflow="procure_to_pay", business_key="PO-77")
    assert run.context["invoices"]["INV-9"]["status"] == "pending"  # waits for its PO and receipt
