"""Procure-to-pay, labour cost allocation and inventory replenishment against a real ERP simulator."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from connectors.simulators import hl7_builder
from healthsync import services
from healthsync.choices import Direction, ExceptionKind, ExceptionStatus, Lane, Protocol, RunStatus
from healthsync.jobs import job_run
from healthsync.models import Connector, ExceptionItem, SyncJobRun, System
from healthsync.pipeline import process_pending
from tests.pipeline_support import commits, feed
from tests.workflows.support import emit, workflow_destinations
from workflows.labour import PayrollFileError, labour_allocation_run, read_payroll_csv
from workflows.models import AllocationRule, ParLevel, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def sims() -> Iterator[tuple]:
    with workflow_destinations() as pair:
        yield pair


def _run(workflow: str, key: str) -> WorkflowRun:
    return WorkflowRun.objects.get(workflow=workflow, business_key=key)


PO = {
    "po_number": "PO-77",
    "supplier": "MEDLINE",
    "lines": [
        {"line": 1, "item_code": "GLOVE-M", "quantity": "100", "unit_price": "0.20"},
        {"line": 2, "item_code": "MASK-N95", "quantity": "50", "unit_price": "1.00"},
    ],
}


def _invoice(number: str = "INV-1", **changes: object) -> dict:
    invoice = {
        "po_number": "PO-77",
        "supplier": "MEDLINE",
        "invoice_number": number,
        "amount": "70.00",
        "lines": [
            {"line": 1, "quantity": "100", "unit_price": "0.20"},
            {"line": 2, "quantity": "50", "unit_price": "1.00"},
        ],
    }
    invoice.update(changes)
    return invoice


def _receipt(quantities: tuple[str, str] = ("100", "50"), receipt_id: str = "RCV-1") -> dict:
    return {
        "po_number": "PO-77",
        "receipt_id": receipt_id,
        "lines": [{"line": 1, "quantity": quantities[0]}, {"line": 2, "quantity": quantities[1]}],
    }


def _p2p(invoice: dict, receipt: dict | None = None) -> None:
    emit("purchase_order.approved", "PO-77", PO, ref="po-77", source="erp-main")
    if receipt is not None:
        emit("supplier.receipt", "PO-77", receipt, ref=receipt["receipt_id"], source="erp-main")
    emit("ap_invoice.received", "PO-77", invoice, ref=invoice["invoice_number"], source="erp-main")


# Procure-to-pay -------------------------------------------------------------------------------------------


def test_a_three_way_matched_invoice_posts_once(sims: tuple) -> None:
    _, erp = sims
    _p2p(_invoice(), _receipt())
    emit("ap_invoice.received", "PO-77", _invoice(), ref="INV-1-resent", source="erp-main")

    assert len(erp.invoices) == 1
    run = _run("procure_to_pay", "PO-77")
    assert run.status == RunStatus.COMPLETED
    assert run.context["invoices"]["INV-1"]["status"] == "posted"
    assert {"po_approved", "received", "invoice_received", "invoice_matched", "invoice_posted"} <= set(
        run.steps.values_list("step", flat=True)
    )


def test_an_invoice_before_its_receipt_waits_then_posts(sims: tuple) -> None:
    _, erp = sims
    _p2p(_invoice())
    assert len(erp.invoices) == 0 and not ExceptionItem.objects.exists()

    emit("supplier.receipt", "PO-77", _receipt(), ref="RCV-1", source="erp-main")

    assert len(erp.invoices) == 1


def test_a_price_within_tolerance_matches(sims: tuple) -> None:
    _, erp = sims
    lines = [
        {"line": 1, "quantity": "100", "unit_price": "0.202"},
        {"line": 2, "quantity": "50", "unit_price": "1.00"},
    ]
    _p2p(_invoice(lines=lines, amount="70.20"), _receipt())

    assert len(erp.invoices) == 1


def test_a_short_receipt_is_a_mismatch_naming_the_line(sims: tuple) -> None:
    _, erp = sims
    _p2p(_invoice(), _receipt(("60", "50")))

    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.MISMATCH
    assert "line 1: invoiced quantity 100 exceeds the received 60" in item.reason
    assert item.amount == Decimal("70.00")
    assert len(erp.invoices) == 0
    assert _run("procure_to_pay", "PO-77").status == RunStatus.BLOCKED


def test_a_price_over_tolerance_posts_after_the_variance_is_approved(sims: tuple, rcm_analyst: User) -> None:
    _, erp = sims
    lines = [
        {"line": 1, "quantity": "100", "unit_price": "0.30"},
        {"line": 2, "quantity": "50", "unit_price": "1.00"},
    ]
    _p2p(_invoice(lines=lines, amount="80.00"), _receipt())
    item = ExceptionItem.objects.get()
    assert "unit price 0.30 differs from the PO price 0.20" in item.reason

    with commits():
        services.exception_retry(
            exception=item, actor=rcm_analyst, fixes={"variance_approval": "J. Buyer: contract price rise"}
        )

    item.refresh_from_db()
    assert item.status == ExceptionStatus.RESOLVED
    assert len(erp.invoices) == 1


def test_a_supplier_invoice_number_already_posted_for_another_po_is_a_mismatch(sims: tuple) -> None:
    _, erp = sims
    _p2p(_invoice(), _receipt())
    # Another PO of the same supplier invoiced with the same invoice number.
    emit("purchase_order.approved", "PO-78", {**PO, "po_number": "PO-78"}, ref="po-78", source="erp-main")
    emit(
        "supplier.receipt",
        "PO-78",
        {**_receipt(), "po_number": "PO-78", "receipt_id": "R2"},
        ref="R2",
        source="erp-main",
    )
    emit(
        "ap_invoice.received",
        "PO-78",
        {**_invoice(), "po_number": "PO-78"},
        ref="INV-1-po78",
        source="erp-main",
    )

    assert len(erp.invoices) == 1
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.MISMATCH
    assert "already posted against PO-77" in item.reason


def test_the_erp_simulator_rejects_a_duplicate_supplier_invoice_under_a_new_reference(sims: tuple) -> None:
    import httpx

    _, erp = sims
    body = {"external_reference": "r1", "supplier": "S", "invoice_number": "9", "amount": "1.00"}
    assert httpx.post(f"{erp.url}/ap-invoices", json=body).status_code == 201
    again = httpx.post(f"{erp.url}/ap-invoices", json=body)
    assert again.status_code == 409 and again.json()["document_number"]
    other = httpx.post(f"{erp.url}/ap-invoices", json={**body, "external_reference": "r2"})
    assert other.status_code == 409 and "already posted" in other.json()["detail"]
    bad = httpx.post(f"{erp.url}/purchase-orders", json={"external_reference": "p"})
    assert bad.status_code == 400 and "supplier is required" in bad.json()["detail"]


# Labour cost allocation -----------------------------------------------------------------------------------

PAYROLL = """employee_id,department,period,gross_pay,employer_taxes,benefits
E1,NURS,2026-01,5000.00,400.00,600.00
E2,NURS,2026-01,4000.00,300.00,300.00
E3,LAB,2026-01,3000.00,200.00,100.00
E4,LAB,2026-02,3000.00,200.00,100.00
"""


@pytest.fixture
def rules() -> None:
    AllocationRule.objects.create(department="NURS", cost_center="CC-4WEST", share=Decimal("60"))
    AllocationRule.objects.create(department="NURS", cost_center="CC-ICU", share=Decimal("40"))
    AllocationRule.objects.create(department="LAB", cost_center="CC-LAB", share=Decimal("100"))


def test_a_period_posts_one_balanced_journal_and_a_rerun_posts_nothing(sims: tuple, rules: None) -> None:
    _, erp = sims
    with commits():
        labour_allocation_run(period="2026-01", csv_text=PAYROLL)
    with commits():
        labour_allocation_run(period="2026-01", csv_text=PAYROLL)

    assert erp.entry_count == 1
    entry = next(iter(erp.entries.values()))["entry"]
    debits = {line["cost_center"]: line["debit"] for line in entry["lines"] if line["debit"] != "0.00"}
    assert debits == {"CC-4WEST": "6360.00", "CC-ICU": "4240.00", "CC-LAB": "3300.00"}
    assert entry["lines"][-1]["credit"] == "13900.00"
    run = _run("labour_allocation", "2026-01")
    assert run.status == RunStatus.COMPLETED
    assert run.context["journal_document_number"] == next(iter(erp.entries))


PAYROLL_LAYOUT = {
    "format": "csv",
    "fields": [
        {"name": "employee_id", "required": True},
        {"name": "department", "required": True},
        {"name": "period", "required": True},
        {"name": "gross_pay", "type": "decimal", "required": True},
        {"name": "employer_taxes", "type": "decimal"},
        {"name": "benefits", "type": "decimal"},
    ],
}


def _payroll_drop(tmp_path: Path) -> Path:
    """An inbound file connector polling a folder for payroll files, as the demo sets one up."""
    drop = tmp_path / "payroll"
    drop.mkdir()
    system, _ = System.objects.get_or_create(code="payroll", defaults={"name": "Payroll"})
    Connector.objects.create(
        system=system,
        code="payroll-drop",
        name="Payroll drop",
        direction=Direction.INBOUND,
        protocol=Protocol.FILE,
        lane=Lane.BATCH,
        config={
            "source": {"type": "folder", "path": str(drop)},
            "pattern": "*.csv",
            "ready": "stable",
            "settle_seconds": 0,
            "message_type": "payroll_allocation",
            "layout": PAYROLL_LAYOUT,
        },
    )
    return drop


def _poll_and_process() -> None:
    with commits():
        job_run("files-poll")
        process_pending()


def test_the_payroll_file_arrives_through_the_file_connector_and_the_batch_window_posts_once(
    sims: tuple, rules: None, tmp_path: Path
) -> None:
    _, erp = sims
    drop = _payroll_drop(tmp_path)
    (drop / "payroll-2026-01.csv").write_text(PAYROLL)
    _poll_and_process()

    run = _run("labour_allocation", "2026-01")
    assert run.step == "payroll_received" and erp.entry_count == 0  # waits for the batch window
    assert "pending_message_id" in _run("labour_allocation", "2026-02").context

    with commits():
        job_id = job_run("labour-allocation")
    assert SyncJobRun.objects.get(pk=job_id).counts == {"allocated": 2}
    references = sorted(e["entry"]["external_reference"] for e in erp.entries.values())
    assert references == ["payroll:labour:2026-01:1", "payroll:labour:2026-02:1"]
    assert _run("labour_allocation", "2026-01").status == RunStatus.COMPLETED

    # The same file dropped again (a resend under another name) and the window run again: nothing new.
    (drop / "payroll-2026-01-resent.csv").write_text(PAYROLL)
    _poll_and_process()
    with commits():
        job_run("labour-allocation")
    with commits():
        job_run("labour-allocation")
    assert erp.entry_count == 2
    assert not ExceptionItem.objects.filter(business_key="2026-01").exists()


def test_a_changed_file_for_a_posted_period_is_a_mismatch_not_a_second_journal(
    sims: tuple, rules: None
) -> None:
    _, erp = sims
    with commits():
        labour_allocation_run(period="2026-01", csv_text=PAYROLL)
    with commits():
        labour_allocation_run(period="2026-01", csv_text=PAYROLL.replace("5000.00", "5100.00"))

    assert erp.entry_count == 1
    assert ExceptionItem.objects.get().kind == ExceptionKind.MISMATCH


def test_a_department_without_complete_rules_blocks_the_period(sims: tuple) -> None:
    _, erp = sims
    AllocationRule.objects.create(department="NURS", cost_center="CC-4WEST", share=Decimal("90"))
    with commits():
        labour_allocation_run(period="2026-01", csv_text=PAYROLL)

    item = ExceptionItem.objects.get()
    assert "NURS add up to 90.00%" in item.reason
    assert "LAB has no allocation rule" in item.reason
    assert erp.entry_count == 0


def test_the_payroll_reader_names_every_bad_row() -> None:
    with pytest.raises(PayrollFileError) as caught:
        read_payroll_csv("employee_id,department,period,gross_pay\nE1,NURS,2026-1,12x\n,LAB,2026-01,1\n")
    assert caught.value.errors == [
        "row 2: period must be YYYY-MM",
        "row 2: gross_pay is not a decimal amount",
        "row 3: employee_id is empty",
    ]
    with pytest.raises(PayrollFileError, match="lacks the column"):
        read_payroll_csv("employee,dept\nE1,NURS\n")


def test_an_unreadable_payroll_file_becomes_an_exception_keeping_the_errors(sims: tuple) -> None:
    with commits():
        labour_allocation_run(period="2026-01", csv_text="employee_id,department\nE1,NURS\n")
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.MAPPING_FAILED
    assert item.detail["errors"]


# Inventory replenishment ----------------------------------------------------------------------------------


def test_usage_below_par_orders_once_and_a_duplicate_feed_never_double_orders(sims: tuple) -> None:
    _, erp = sims
    ParLevel.objects.create(
        item_code="GLOVE-M",
        location="4WEST",
        par=100,
        reorder_point=20,
        on_hand=30,
        unit_cost=Decimal("0.20"),
        supplier="MEDLINE",
    )
    usage = {"feed_id": "F1", "location": "4WEST", "items": [{"item_code": "GLOVE-M", "quantity": 15}]}
    emit("supply.used", "4WEST", usage, ref="F1", source="materials")
    emit("supply.used", "4WEST", usage, ref="F1-resent", source="materials")  # the same feed again
    emit("supply.used", "4WEST", {**usage, "feed_id": "F2"}, ref="F2", source="materials")

    assert ParLevel.objects.get().on_hand == 0
    assert len(erp.purchase_orders) == 1
    po = next(iter(erp.purchase_orders.values()))["document"]
    assert po["lines"][0]["quantity"] == 85

    emit(
        "supply.received",
        "4WEST",
        {"item_code": "GLOVE-M", "location": "4WEST", "quantity": 85, "receipt_id": "G1"},
        ref="G1",
        source="materials",
    )
    assert ParLevel.objects.get().on_hand == 85
    emit(
        "supply.used",
        "4WEST",
        {**usage, "feed_id": "F3", "items": [{"item_code": "GLOVE-M", "quantity": 70}]},
        ref="F3",
        source="materials",
    )
    assert len(erp.purchase_orders) == 2


def _supply_charge(charge_id: str, quantity: str) -> dict:
    return {
        "charge_id": charge_id,
        "code": "272001",
        "description": "Central line kit",
        "quantity": quantity,
        "amount": f"{Decimal(quantity) * 95:.2f}",
        "unit_amount": "95.00",
        "cpt": "",
        "department": "4WEST",
        "type": "CG",
    }


def test_supply_charges_from_dft_use_stock_and_a_resent_dft_never_double_orders(sims: tuple) -> None:
    _, erp = sims
    ParLevel.objects.create(
        item_code="CVC-KIT",
        location="4WEST",
        charge_code="272001",
        par=10,
        reorder_point=4,
        on_hand=6,
        unit_cost=Decimal("41.00"),
        supplier="BD",
    )
    first = hl7_builder.dft_p03(charges=[*hl7_builder.DEFAULT_CHARGES, _supply_charge("CHG2001", "2")])
    feed(first)
    # The same DFT resent under a new control id: the same charge, no second usage.
    feed(hl7_builder.dft_p03(charges=[*hl7_builder.DEFAULT_CHARGES, _supply_charge("CHG2001", "2")]))
    feed(hl7_builder.dft_p03(charges=[_supply_charge("CHG2001", "2")]))

    par = ParLevel.objects.get()
    assert par.on_hand == 4  # the room charge and the lab test are no supplies; CHG2001 counted once
    assert len(erp.purchase_orders) == 1
    po = next(iter(erp.purchase_orders.values()))["document"]
    assert po["lines"][0] == {**po["lines"][0], "item_code": "CVC-KIT", "quantity": 6}

    feed(hl7_builder.dft_p03(charges=[_supply_charge("CHG2002", "1")]))  # more usage, requisition open
    assert ParLevel.objects.get().on_hand == 3 and len(erp.purchase_orders) == 1
    run = _run("inventory_replenishment", "CVC-KIT@4WEST")
    assert run.context["feeds"] == ["charge:CHG2001", "charge:CHG2002"]
