"""Inventory replenishment: supply usage against par levels → requisition → PO to the ERP.

One WorkflowRun per item at a location. A usage feed is applied once per feed id (a duplicate feed changes
nothing), and a requisition stays open until its stock is received, so repeated usage never double-orders.
Usage comes from a materials feed (supply.used) or from supply charges (charge.posted from DFT^P03: a charge
whose chargemaster code is a ParLevel's charge_code), each charge id counted once.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils import timezone

from healthsync.choices import DeliveryStatus, RunStatus
from healthsync.deliveries import connector_for_operation, delivery_request
from healthsync.models import CanonicalEvent, Delivery
from healthsync.registry import workflow_registry
from healthsync.unitofwork import snapshot
from workflows.models import ParLevel
from workflows.runs import record_step, run_for

WORKFLOW = "inventory_replenishment"
PO_OPERATION = "post_purchase_order"


def register() -> None:
    for event_type, handler in (
        ("supply.used", on_usage),
        ("supply.received", on_supply_received),
        ("charge.posted", on_charges),
    ):
        if handler not in workflow_registry.handlers_for(event_type):
            workflow_registry.on_event(event_type, handler)
    workflow_registry.on_delivery(WORKFLOW, on_delivery)


def _key(item_code: str, location: str) -> str:
    return f"{item_code}@{location}"


def on_usage(event: CanonicalEvent) -> None:
    """Usage lines {item_code, quantity} at data["location"]; data["feed_id"] identifies the feed."""
    data = event.data
    feed_id = str(data.get("feed_id") or event.source_ref)
    location = str(data.get("location") or "")
    for line in data.get("items") or []:
        item_code = str(line.get("item_code") or "")
        par = ParLevel.objects.select_for_update().filter(item_code=item_code, location=location).first()
        if par is not None:  # items without a par level are not stocked here
            _use(par, _quantity(line.get("quantity")), feed_id, event)


def on_charges(event: CanonicalEvent) -> None:
    """DFT^P03 supply charges: a charge whose chargemaster code is a stocked item's uses that item.

    The charge id is the feed id, so a DFT sent twice (or a charge repeated in a later DFT) uses stock once.
    A credit (FT1-6 CD) is not usage: the supply was not used up, so it is left to a stock count.
    """
    stocked = snapshot("workflows.stocked_charge_codes", _stocked_charge_codes)
    for charge in event.data.get("charges") or []:
        code = str(charge.get("chargemaster_code") or "")
        if not code or charge.get("type", "CG") != "CG" or code not in stocked:
            continue
        pars = list(ParLevel.objects.select_for_update().filter(charge_code=code).order_by("id"))
        if not pars:
            continue
        # The stock of the charging department when it keeps the item, else the item's one stocking location.
        department = str(charge.get("department") or "")
        par = next((p for p in pars if p.location == department), pars[0])
        _use(par, _quantity(charge.get("quantity")), f"charge:{charge.get('charge_id')}", event)


def _stocked_charge_codes() -> frozenset[str]:
    # Most charges are services, not stocked supplies: one read per processing batch tells them apart.
    return frozenset(ParLevel.objects.exclude(charge_code="").values_list("charge_code", flat=True))


def _quantity(value: Any) -> int:
    try:
        return int(Decimal(str(value or "0")))
    except InvalidOperation:
        return 0


def _use(par: ParLevel, quantity: int, feed_id: str, event: CanonicalEvent) -> None:
    """Take `quantity` off the item's stock once per feed id, and requisition when it falls to reorder point."""
    run = run_for(WORKFLOW, _key(par.item_code, par.location))
    feeds = run.context.setdefault("feeds", [])
    if feed_id in feeds:
        return
    feeds.append(feed_id)
    par.on_hand -= quantity
    par.save(update_fields=["on_hand"])
    run.facility = par.location[:80]
    record_step(run, "usage_recorded", event.occurred_at, event=event, note=feed_id)
    run.context["on_hand"] = par.on_hand
    _requisition_if_needed(run, par, event)
    run.save()


def _requisition_if_needed(run: Any, par: ParLevel, event: CanonicalEvent | None) -> None:
    if par.on_hand > par.reorder_point or run.context.get("open_requisition"):
        return
    sequence = int(run.context.get("requisitions", 0)) + 1
    quantity = par.par - par.on_hand
    number = f"REQ-{par.location}-{par.item_code}-{sequence}"
    run.context["requisitions"] = sequence
    run.context["open_requisition"] = {"number": number, "quantity": quantity}
    run.amount = par.unit_cost * quantity
    record_step(run, "requisitioned", timezone.now(), event=event, note=number)
    run.status = RunStatus.ACTIVE
    key = f"healthsync:requisition:{run.business_key}:{sequence}"
    delivery_request(
        connector=connector_for_operation(PO_OPERATION),
        operation=PO_OPERATION,
        payload={
            "external_reference": key,
            "po_number": number,
            "supplier": par.supplier or "DEFAULT",
            "ship_to": par.location,
            "currency": "USD",
            "lines": [
                {
                    "line": 1,
                    "item_code": par.item_code,
                    "description": par.description,
                    "quantity": quantity,
                    "unit_price": f"{par.unit_cost:.2f}",
                }
            ],
        },
        idempotency_key=key,
        workflow=WORKFLOW,
        business_key=run.business_key,
        event=event,
    )


def on_supply_received(event: CanonicalEvent) -> None:
    """Stock arrived for an open requisition: on hand goes up and the next shortage may order again."""
    data = event.data
    item_code, location = str(data.get("item_code") or ""), str(data.get("location") or "")
    par = ParLevel.objects.select_for_update().filter(item_code=item_code, location=location).first()
    if par is None:
        return
    run = run_for(WORKFLOW, _key(item_code, location))
    received = run.context.setdefault("received", [])
    receipt = str(data.get("receipt_id") or event.source_ref)
    if receipt in received:
        return
    received.append(receipt)
    par.on_hand += int(data.get("quantity") or 0)
    par.save(update_fields=["on_hand"])
    run.context["on_hand"] = par.on_hand
    run.context["open_requisition"] = None
    _requisition_if_needed(run, par, event)
    run.save()


def on_delivery(delivery: Delivery) -> None:
    run = run_for(WORKFLOW, delivery.business_key)
    if delivery.status == DeliveryStatus.SUCCEEDED:
        if run.context.get("open_requisition"):
            run.context["open_requisition"]["document_number"] = delivery.external_id
        record_step(run, "po_posted", timezone.now(), delivery=delivery, note=delivery.external_id)
    elif delivery.status == DeliveryStatus.FAILED:
        run.status = RunStatus.BLOCKED
    run.save()
