"""Procure-to-pay: PO approved → supplier receipt → AP invoice matched (2-way or 3-way, within tolerance) → ERP.

One WorkflowRun per purchase order (business key = PO number). Its context holds the PO lines, the quantities
received per line and each invoice with its match status. An invoice that does not match raises a mismatch
exception naming every line that differs; approving the variance from the exception queue (or a receipt that
arrives later) lets it post. The ERP posting is keyed by supplier and invoice number, so it happens once.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

from healthsync.choices import DeliveryStatus, ExceptionKind, ExceptionStatus, RunStatus
from healthsync.deliveries import connector_for_operation, delivery_request, delivery_reset
from healthsync.models import CanonicalEvent, Delivery, ExceptionItem
from healthsync.registry import workflow_registry
from healthsync.unitofwork import flush
from workflows.exceptions import exception_raise_or_refresh
from workflows.models import WorkflowRun
from workflows.runs import record_step, run_for

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

WORKFLOW = "procure_to_pay"
INVOICE_OPERATION = "post_ap_invoice"
VARIANCE_FIELD = "variance_approval"
CENT = Decimal("0.01")


def register() -> None:
    for event_type, handler in (
        ("purchase_order.approved", on_po_approved),
        ("supplier.receipt", on_receipt),
        ("ap_invoice.received", on_invoice),
    ):
        if handler not in workflow_registry.handlers_for(event_type):
            workflow_registry.on_event(event_type, handler)
    workflow_registry.on_delivery(WORKFLOW, on_delivery)
    workflow_registry.on_retry(WORKFLOW, on_retry)


def tolerance_percent() -> Decimal:
    """Allowed price or amount variance per line, in percent (HEALTHSYNC_MATCH_TOLERANCE_PERCENT, default 2)."""
    return Decimal(str(getattr(settings, "HEALTHSYNC_MATCH_TOLERANCE_PERCENT", "2")))


def on_po_approved(event: CanonicalEvent) -> None:
    data = event.data
    run = run_for(WORKFLOW, str(data.get("po_number") or event.subject))
    run.context.update(
        {
            "supplier": str(data.get("supplier", "")),
            "match": "3-way" if data.get("receipt_required", True) else "2-way",
            "lines": {str(line.get("line")): line for line in data.get("lines") or []},
            "source_system": event.source,
        }
    )
    run.context.setdefault("received", {})
    run.context.setdefault("invoices", {})
    run.facility = str(data.get("facility") or event.facility or "")[:80]
    run.amount = _amount(data.get("total")) or sum(
        (_amount(line.get("quantity")) * _amount(line.get("unit_price")) for line in data.get("lines") or []),
        Decimal("0"),
    ).quantize(CENT)
    record_step(run, "po_approved", event.occurred_at, event=event)
    run.save()
    _rematch(run, event)


def on_receipt(event: CanonicalEvent) -> None:
    data = event.data
    run = run_for(WORKFLOW, str(data.get("po_number") or event.subject))
    receipts = run.context.setdefault("receipts", [])
    receipt_id = str(data.get("receipt_id") or event.source_ref)
    if receipt_id in receipts:
        return  # the same receipt twice counts once
    receipts.append(receipt_id)
    received = run.context.setdefault("received", {})
    for line in data.get("lines") or []:
        key = str(line.get("line"))
        received[key] = str(_amount(received.get(key)) + _amount(line.get("quantity")))
    record_step(run, "received", event.occurred_at, event=event, note=receipt_id)
    run.save()
    _rematch(run, event)


def on_invoice(event: CanonicalEvent) -> None:
    data = event.data
    run = run_for(WORKFLOW, str(data.get("po_number") or event.subject))
    number = str(data.get("invoice_number") or event.source_ref)
    invoices = run.context.setdefault("invoices", {})
    if number in invoices:
        return
    invoices[number] = {
        "invoice_number": number,
        "supplier": str(data.get("supplier") or run.context.get("supplier", "")),
        "amount": str(_amount(data.get("amount"))),
        "lines": data.get("lines") or [],
        "invoice_date": str(data.get("invoice_date") or ""),
        "status": "pending",
        "event_id": str(event.pk),
    }
    record_step(run, "invoice_received", event.occurred_at, event=event, note=number)
    run.save()
    _rematch(run, event)


def match_invoice(context: dict[str, Any], invoice: dict[str, Any]) -> list[str]:
    """Plain-language differences between the invoice and the PO (and the receipts, for 3-way); [] = match."""
    lines = context.get("lines") or {}
    if not lines:
        return ["no approved purchase order is known for this invoice"]
    tolerance = tolerance_percent() / 100
    problems = []
    received = context.get("received") or {}
    total = Decimal("0")
    for line in invoice.get("lines") or []:
        key = str(line.get("line"))
        quantity, price = _amount(line.get("quantity")), _amount(line.get("unit_price"))
        total += quantity * price
        ordered = lines.get(key)
        if ordered is None:
            problems.append(f"line {key} is not on the purchase order")
            continue
        ordered_price = _amount(ordered.get("unit_price"))
        if abs(price - ordered_price) > ordered_price * tolerance:
            problems.append(f"line {key}: unit price {price} differs from the PO price {ordered_price}")
        if quantity > _amount(ordered.get("quantity")):
            problems.append(
                f"line {key}: invoiced quantity {quantity} exceeds the ordered {ordered.get('quantity')}"
            )
        if context.get("match") == "3-way" and quantity > _amount(received.get(key)):
            problems.append(
                f"line {key}: invoiced quantity {quantity} exceeds the received {received.get(key, '0')}"
            )
    stated = _amount(invoice.get("amount"))
    if stated and abs(stated - total) > max(total * tolerance, CENT):
        problems.append(f"invoice total {stated} differs from its lines ({total.quantize(CENT)})")
    return problems


def _rematch(run: WorkflowRun, event: CanonicalEvent | None) -> None:
    for number, invoice in (run.context.get("invoices") or {}).items():
        if invoice.get("status") in ("matched", "posted"):
            continue
        if not run.context.get("lines"):
            continue  # the PO has not arrived yet: wait for it
        if run.context.get("match") == "3-way" and not run.context.get("received"):
            continue  # nothing received yet: a 3-way match waits for the receipt
        problems = match_invoice(run.context, invoice)
        if problems and not invoice.get("variance_approval"):
            invoice["status"] = "mismatch"
            invoice["problems"] = problems
            _raise_mismatch(run, number, invoice, problems, event)
            continue
        duplicate = _posted_elsewhere(run, invoice)
        if duplicate:
            invoice["status"] = "mismatch"
            problems = [f"invoice {number} of {invoice['supplier']} is already posted against {duplicate}"]
            invoice["problems"] = problems
            _raise_mismatch(run, number, invoice, problems, event)
            continue
        invoice["status"] = "matched"
        invoice.pop("problems", None)
        record_step(run, "invoice_matched", timezone.now(), event=event, note=number)
        _resolve(run, number, f"Invoice {number} matched.")
        _post(run, number, invoice, event)
    run.save()


def _invoice_key(run: WorkflowRun, invoice: dict[str, Any]) -> str:
    return (
        f"{run.context.get('source_system', 'erp')}:apinv:{invoice['supplier']}:{invoice['invoice_number']}"
    )


def _posted_elsewhere(run: WorkflowRun, invoice: dict[str, Any]) -> str:
    """The PO a supplier's invoice number was already sent for, when it is another PO (a duplicate invoice)."""
    flush()  # deliveries asked for earlier in the chunk are written at its end: look at them too
    other = Delivery.objects.filter(idempotency_key=_invoice_key(run, invoice)).exclude(
        business_key=run.business_key
    )
    return other.values_list("business_key", flat=True).first() or ""


def _post(run: WorkflowRun, number: str, invoice: dict[str, Any], event: CanonicalEvent | None) -> None:
    supplier = invoice["supplier"]
    key = _invoice_key(run, invoice)
    payload = {
        "external_reference": key,
        "supplier": supplier,
        "invoice_number": number,
        "po_number": run.business_key,
        "invoice_date": invoice.get("invoice_date", ""),
        "amount": invoice["amount"],
        "currency": "USD",
        "match": run.context.get("match", ""),
        "lines": invoice.get("lines") or [],
    }
    delivery = delivery_request(
        connector=connector_for_operation(INVOICE_OPERATION),
        operation=INVOICE_OPERATION,
        payload=payload,
        idempotency_key=key,
        workflow=WORKFLOW,
        business_key=run.business_key,
        event=event if event is not None and event.pk else None,
    )
    invoice["delivery_id"] = delivery.pk


def on_delivery(delivery: Delivery) -> None:
    run = run_for(WORKFLOW, delivery.business_key)
    number = str((delivery.payload or {}).get("invoice_number", ""))
    invoice = (run.context.get("invoices") or {}).get(number)
    if delivery.status == DeliveryStatus.FAILED:
        run.status = RunStatus.BLOCKED
        ExceptionItem.objects.open().filter(delivery=delivery).update(
            amount=run.amount, facility=run.facility
        )
        run.save()
        return
    if delivery.status != DeliveryStatus.SUCCEEDED or invoice is None:
        return
    invoice["status"] = "posted"
    invoice["document_number"] = delivery.external_id
    record_step(run, "invoice_posted", timezone.now(), delivery=delivery, note=delivery.external_id)
    posted = sum(
        (_amount(i.get("amount")) for i in run.context["invoices"].values() if i.get("status") == "posted"),
        Decimal("0"),
    )
    if posted >= run.amount and all(i.get("status") == "posted" for i in run.context["invoices"].values()):
        run.status = RunStatus.COMPLETED
        run.completed_at = run.completed_at or timezone.now()
    else:
        run.status = RunStatus.ACTIVE
    run.save()


def on_retry(exception: ExceptionItem, fixes: dict[str, str], actor: User) -> None:
    """Approve a variance (the fix field), or simply match again after a receipt or PO change."""
    run = run_for(WORKFLOW, exception.business_key)
    if exception.delivery_id is not None:
        assert exception.delivery is not None
        delivery_reset(delivery=exception.delivery)
        return
    number = str((exception.detail or {}).get("invoice_number", ""))
    invoice = (run.context.get("invoices") or {}).get(number)
    if invoice is not None and fixes.get(VARIANCE_FIELD):
        invoice["variance_approval"] = {
            "note": fixes[VARIANCE_FIELD],
            "by": getattr(actor, "username", ""),
            "at": timezone.now().isoformat(),
        }
    run.status = RunStatus.ACTIVE
    run.save()
    _rematch(run, exception.event)


def _raise_mismatch(
    run: WorkflowRun, number: str, invoice: dict[str, Any], problems: list[str], event: CanonicalEvent | None
) -> None:
    exception_raise_or_refresh(
        run,
        ExceptionKind.MISMATCH,
        f"Invoice {number} does not match purchase order {run.business_key}: " + "; ".join(problems),
        detail={
            "invoice_number": number,
            "problems": problems,
            "fix_fields": [
                {"name": VARIANCE_FIELD, "label": "Variance approved by (name and reason)", "required": True}
            ],
        },
        event=event,
        match={"detail__invoice_number": number},
        facility=run.facility,
        payer=invoice.get("supplier", "")[:120],
        amount=_amount(invoice.get("amount")),
    )


def _resolve(run: WorkflowRun, number: str, note: str) -> None:
    items = ExceptionItem.objects.open().filter(
        workflow=WORKFLOW,
        business_key=run.business_key,
        kind=ExceptionKind.MISMATCH,
        detail__invoice_number=number,
    )
    for item in items:
        item.status = ExceptionStatus.RESOLVED
        item.resolved_at = timezone.now()
        item.resolution_note = note
        item.save(update_fields=["status", "resolved_at", "resolution_note", "updated_at"])
    if not ExceptionItem.objects.open().filter(workflow=WORKFLOW, business_key=run.business_key).exists():
        run.status = RunStatus.ACTIVE


def _amount(value: Any) -> Decimal:
    try:
        return Decimal(str(value or "0"))
    except InvalidOperation:
        return Decimal("0")
