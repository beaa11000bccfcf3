"""JSON feeds: the source path reader the mapping engine uses, and an invoice mapped from JSON into procure-to-pay."""

from __future__ import annotations

import pytest

from connectors.json_message import JsonParseError, parse
from healthsync.choices import Direction, Lane, MessageStatus, Protocol
from healthsync.mapping import apply_rules
from healthsync.models import Connector, ExceptionItem, MappingRule, Message
from healthsync.pipeline import process_pending
from healthsync.seed import rule_spec, seed_mappings, seed_schemas
from tests.pipeline_support import commits
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


@pytest.mark.django_db
def test_a_json_message_on_a_rest_connector_is_mapped_by_the_pipeline_into_procure_to_pay() -> None:
    with workflow_destinations():
        erp = Connector.objects.get(code="erp-journals")
        inbound = Connector.objects.create(
            system=erp.system,
            code="erp-invoices-in",
            name="ERP invoices (REST inbound)",
            direction=Direction.INBOUND,
            protocol=Protocol.REST,
            lane=Lane.FINANCIAL,
            config={"base_url": "http://127.0.0.1:1"},
        )
        seed_schemas(
            {
                "ap_invoice.received": {
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "required": ["invoice_number", "po_number"],
                }
            }
        )
        seed_mappings(
            [
                {
                    "code": "erp-json-ap-invoice",
                    "name": "AP invoice (JSON)",
                    "protocol": Protocol.REST,
                    "message_type": "ap_invoice",
                    "event_type": "ap_invoice.received",
                    "rules": [
                        rule_spec("invoice_number", "id", required=True),
                        rule_spec("po_number", "po", required=True),
                        rule_spec("event.subject", "po"),
                        rule_spec("supplier", "supplier.id"),
                        rule_spec("amount", "total"),
                        rule_spec("lines[].line", "lines[*].line"),
                        rule_spec("lines[].quantity", "lines[*].qty"),
                        rule_spec("lines[].unit_price", "lines[*].price"),
                    ],
                }
            ]
        )
        good = Message.objects.create(connector=inbound, raw=INVOICE, sha256="a" * 64, lane=Lane.FINANCIAL)
        bad = Message.objects.create(connector=inbound, raw=b"[1, 2]", sha256="b" * 64, lane=Lane.FINANCIAL)
        with commits():
            process_pending()

    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.status == MessageStatus.PROCESSED and good.message_type == "ap_invoice"
    run = WorkflowRun.objects.get(workflow="procure_to_pay", business_key="PO-77")
    assert run.context["invoices"]["INV-9"]["status"] == "pending"
    assert bad.status == MessageStatus.FAILED and bytes(bad.raw) == b"[1, 2]"
    assert "must be a JSON object" in ExceptionItem.objects.get(message=bad).reason
