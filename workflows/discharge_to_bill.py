"""Discharge-to-bill: discharge → account complete → claim to the RCM → accrual journal to the ERP.

One WorkflowRun per encounter (business key = encounter id). Its context is the account as known so far:
the encounter data merged from encounter.admitted and encounter.discharged (later non-empty values win),
the charges by charge id, fixes people made from the exception queue, and the ids the destinations gave back.

Steps: admitted → charges_posted → discharged → claim_ready → claim_submitted → accrual_posted (completed).
A discharge the RCM cannot bill (no insurance, diagnosis, attending or financial class) blocks the run with a
missing_data exception naming what is missing and the fields that fix it; retrying it with the fixes sends the
claim. Idempotency keys make every effect happen once however often events or retries repeat.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from healthsync.choices import DeliveryStatus, ExceptionKind, ExceptionStatus, RunStatus
from healthsync.deliveries import connector_for_operation, delivery_request, delivery_reset
from healthsync.models import CanonicalEvent, Delivery, ExceptionItem
from healthsync.registry import workflow_registry
from workflows.models import WorkflowRun, WorkflowStep

if TYPE_CHECKING:
    from datetime import datetime

    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

WORKFLOW = "discharge_to_bill"
CLAIM_OPERATION = "submit_claim"
ACCRUAL_OPERATION = "post_accrual"
RECEIVABLE_ACCOUNT = ("1200", "Patient accounts receivable")
REVENUE_ACCOUNT = ("4000", "Patient service revenue")
# Context keys the workflow owns; encounter data never overwrites them.
_RESERVED = {"charges", "claim_id", "claim_delivery_id", "journal_document_number", "source_system", "fixes"}

# What billing needs, in the order people read it, with the fields that complete it.
REQUIREMENTS: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "insurance",
        [
            {"name": "coverage.payer_name", "label": "Insurance payer", "required": True},
            {"name": "coverage.payer_id", "label": "Payer id", "required": True},
            {"name": "coverage.policy_number", "label": "Policy number", "required": False},
        ],
    ),
    ("diagnosis", [{"name": "diagnosis.code", "label": "Principal diagnosis (ICD-10-CM)", "required": True}]),
    (
        "attending physician",
        [
            {"name": "attending.id", "label": "Attending physician id (NPI)", "required": True},
            {"name": "attending.name", "label": "Attending physician name", "required": False},
        ],
    ),
    ("financial class", [{"name": "financial_class", "label": "Financial class", "required": True}]),
]
FIX_FIELD_NAMES = {field["name"] for _, fields in REQUIREMENTS for field in fields}


def register() -> None:
    """Subscribe to canonical events, delivery outcomes and exception retries (safe to call twice)."""
    for event_type, handler in (
        ("encounter.admitted", on_admitted),
        ("charge.posted", on_charges_posted),
        ("encounter.discharged", on_discharged),
    ):
        if handler not in workflow_registry.handlers_for(event_type):
            workflow_registry.on_event(event_type, handler)
    workflow_registry.on_delivery(WORKFLOW, on_delivery)
    workflow_registry.on_retry(WORKFLOW, on_retry)


# Events ---------------------------------------------------------------------------------------------------


def on_admitted(event: CanonicalEvent) -> None:
    run = _run_for(event.subject)
    _merge_encounter(run, event)
    _step(run, "admitted", _when(event.data.get("admitted_at")) or event.occurred_at, event=event)
    run.save()


def on_charges_posted(event: CanonicalEvent) -> None:
    run = _run_for(event.subject)
    run.context.setdefault("source_system", event.source)
    charges = run.context.setdefault("charges", {})
    for charge in event.data.get("charges", []):
        # Keyed by FT1-2 so that a charge sent twice counts once.
        charges[str(charge.get("charge_id"))] = charge
    run.amount = total_charges(run.context)
    if not run.facility and event.data.get("facility"):
        run.facility = str(event.data["facility"])[:80]
    _step(run, "charges_posted", event.occurred_at or timezone.now(), event=event)
    run.save()


def on_discharged(event: CanonicalEvent) -> None:
    run = _run_for(event.subject)
    _merge_encounter(run, event)
    _step(run, "discharged", _when(event.data.get("discharged_at")) or event.occurred_at, event=event)
    run.save()
    advance(run, event=event)


def advance(run: WorkflowRun, *, event: CanonicalEvent | None = None) -> None:
    """Check the account and, once it is complete, ask the RCM for the claim (once)."""
    if run.status in (RunStatus.COMPLETED, RunStatus.CANCELLED) or run.context.get("claim_delivery_id"):
        return
    if not run.steps.filter(step="discharged").exists():
        return
    missing = missing_requirements(run.context)
    if missing:
        _raise_missing_data(run, missing, event=event)
        return
    _step(run, "claim_ready", timezone.now(), event=event)
    run.status = RunStatus.ACTIVE
    encounter_id = run.business_key
    source = run.context.get("source_system") or (event.source if event else "unknown")
    delivery = delivery_request(
        connector=connector_for_operation(CLAIM_OPERATION),
        operation=CLAIM_OPERATION,
        payload=claim_payload(run),
        idempotency_key=f"{source}:claim:{encounter_id}:1",
        workflow=WORKFLOW,
        business_key=encounter_id,
        event=event,
    )
    run.context["claim_delivery_id"] = delivery.pk
    run.save()


# Delivery outcomes ----------------------------------------------------------------------------------------


def on_delivery(delivery: Delivery) -> None:
    run = _run_for(delivery.business_key)
    if delivery.status == DeliveryStatus.FAILED:
        run.status = RunStatus.BLOCKED
        run.save()
        # The delivery service raised the exception; give it the account facts the queue sorts by.
        ExceptionItem.objects.open().filter(delivery=delivery).update(
            facility=run.facility, payer=run.payer, amount=run.amount
        )
        if delivery.operation == CLAIM_OPERATION:
            # The account was complete enough to send; what blocks it now is the delivery's own exception.
            _resolve_missing_data(
                run, "The account is complete; the claim's delivery exception tracks the rest."
            )
        return
    if delivery.status != DeliveryStatus.SUCCEEDED:
        return
    if delivery.operation == CLAIM_OPERATION:
        run.context["claim_id"] = delivery.external_id
        _step(run, "claim_submitted", timezone.now(), delivery=delivery, note=delivery.external_id)
        _resolve_missing_data(run, f"Claim {delivery.external_id} submitted to the RCM.")
        if run.amount > 0:
            source = run.context.get("source_system", "unknown")
            key = f"{source}:accrual:{run.business_key}:1"
            delivery_request(
                connector=connector_for_operation(ACCRUAL_OPERATION),
                operation=ACCRUAL_OPERATION,
                payload=accrual_payload(run, key),
                idempotency_key=key,
                workflow=WORKFLOW,
                business_key=run.business_key,
                event=delivery.event,
            )
            run.status = RunStatus.ACTIVE
        else:
            # Nothing to accrue: the account is billed and the ledger has nothing to say about it.
            _complete(run)
        run.save()
    elif delivery.operation == ACCRUAL_OPERATION:
        run.context["journal_document_number"] = delivery.external_id
        _step(run, "accrual_posted", timezone.now(), delivery=delivery, note=delivery.external_id)
        _complete(run)
        run.save()


def _complete(run: WorkflowRun) -> None:
    run.status = RunStatus.COMPLETED
    run.completed_at = run.completed_at or timezone.now()


# Retries from the exception queue ------------------------------------------------------------------------


def on_retry(exception: ExceptionItem, fixes: dict[str, str], actor: User) -> None:
    """Apply people's fixes to the run (never to the source message or event) and carry the work on."""
    run = _run_for(exception.business_key)
    if fixes:
        apply_fixes(run, fixes, actor)
        run.save()
    if exception.delivery_id is not None:
        delivery = exception.delivery
        assert delivery is not None
        if fixes and delivery.operation == CLAIM_OPERATION and delivery.status == DeliveryStatus.FAILED:
            # The RCM never accepted this claim, so the same key may carry the corrected payload.
            delivery.payload = claim_payload(run)
            delivery.save(update_fields=["payload"])
        delivery_reset(delivery=delivery)
        if run.status == RunStatus.BLOCKED:
            run.status = RunStatus.ACTIVE
            run.save()
        return
    advance(run, event=exception.event)


def apply_fixes(run: WorkflowRun, fixes: dict[str, str], actor: User | None) -> None:
    context = run.context
    for name, value in fixes.items():
        if name not in FIX_FIELD_NAMES:
            raise ValueError(f"{name} is not a field this workflow can fix")
        if name == "diagnosis.code":
            diagnoses = [d for d in context.get("diagnoses", []) if d.get("code") != value]
            context["diagnoses"] = [{"code": value, "type": "F"}, *diagnoses]
            continue
        _set(context, name, value)
    context.setdefault("fixes", []).append(
        {
            "fields": sorted(fixes),
            "by": getattr(actor, "username", ""),
            "at": timezone.now().isoformat(),
        }
    )
    _refresh_run_columns(run)


# Account checks and payloads ------------------------------------------------------------------------------


def missing_requirements(context: dict[str, Any]) -> list[str]:
    """What billing still needs, by plain name (insurance, diagnosis, attending physician, financial class)."""
    coverage = context.get("coverage") or {}
    attending = context.get("attending") or {}
    present = {
        "insurance": bool(coverage.get("payer_id")),
        "diagnosis": any(d.get("code") for d in context.get("diagnoses") or [] if isinstance(d, dict)),
        "attending physician": bool(attending.get("id") or attending.get("name")),
        "financial class": bool(context.get("financial_class")),
    }
    return [name for name, _ in REQUIREMENTS if not present[name]]


def missing_reason(encounter_id: str, missing: list[str]) -> str:
    if len(missing) == 1:
        listed, verb = missing[0], "is"
    else:
        listed, verb = ", ".join(missing[:-1]) + " and " + missing[-1], "are"
    return f"Discharge of encounter {encounter_id} cannot be billed: {listed} {verb} missing"


def total_charges(context: dict[str, Any]) -> Decimal:
    total = Decimal("0.00")
    for charge in (context.get("charges") or {}).values():
        try:
            amount = Decimal(str(charge.get("amount") or "0"))
        except InvalidOperation:
            continue
        kind = charge.get("type", "CG")
        if kind == "CD":
            total -= abs(amount)
        elif kind in ("CG", "AJ"):
            total += amount
    return total.quantize(Decimal("0.01"))


def claim_payload(run: WorkflowRun) -> dict[str, Any]:
    """The claim the RCM receives: account, patient, payer, encounter, diagnoses and charge lines."""
    c = run.context
    coverage = c.get("coverage") or {}
    patient = c.get("patient") or {}
    lines = [
        {
            "charge_id": charge.get("charge_id"),
            "chargemaster_code": charge.get("chargemaster_code", ""),
            "cpt": charge.get("cpt", ""),
            "description": charge.get("description", ""),
            "quantity": charge.get("quantity", "1"),
            "amount": charge.get("amount", "0"),
            "service_date": charge.get("service_date", ""),
        }
        for charge in (c.get("charges") or {}).values()
        if charge.get("type", "CG") in ("CG", "AJ", "CD")
    ]
    return {
        "patient_control_number": run.business_key,
        "account_number": c.get("account_number", ""),
        "claim_frequency": "1",
        "facility": c.get("facility", ""),
        "patient": {key: patient.get(key, "") for key in ("mrn", "name", "birth_date", "sex")},
        "payer": {
            "id": coverage.get("payer_id", ""),
            "name": coverage.get("payer_name", ""),
            "plan_id": coverage.get("plan_id", ""),
            "policy_number": coverage.get("policy_number", ""),
            "group_number": coverage.get("group_number", ""),
        },
        "encounter": {
            "patient_class": c.get("patient_class", ""),
            "admitted_at": c.get("admitted_at", ""),
            "discharged_at": c.get("discharged_at", ""),
            "disposition": c.get("disposition", ""),
            "attending": c.get("attending") or {},
            "financial_class": c.get("financial_class", ""),
        },
        "diagnoses": c.get("diagnoses") or [],
        "lines": lines,
        "total_charges": str(total_charges(c)),
    }


def accrual_payload(run: WorkflowRun, external_reference: str) -> dict[str, Any]:
    """A balanced revenue accrual: debit receivables, credit revenue, for the account's charges."""
    amount = str(total_charges(run.context))
    discharged = _when(run.context.get("discharged_at")) or timezone.now()
    cost_center = run.facility or run.context.get("facility", "")
    return {
        "external_reference": external_reference,
        "journal_date": discharged.date().isoformat(),
        "period": discharged.strftime("%Y-%m"),
        "currency": "USD",
        "description": f"Revenue accrual, encounter {run.business_key}, claim {run.context.get('claim_id', '')}",
        "source_document": run.context.get("claim_id", ""),
        "lines": [
            {
                "account": RECEIVABLE_ACCOUNT[0],
                "account_name": RECEIVABLE_ACCOUNT[1],
                "cost_center": cost_center,
                "debit": amount,
                "credit": "0.00",
            },
            {
                "account": REVENUE_ACCOUNT[0],
                "account_name": REVENUE_ACCOUNT[1],
                "cost_center": cost_center,
                "debit": "0.00",
                "credit": amount,
            },
        ],
    }


# Internals ------------------------------------------------------------------------------------------------


def _run_for(business_key: str) -> WorkflowRun:
    # The row lock orders concurrent events of one encounter (per business key ordering).
    run, _ = WorkflowRun.objects.select_for_update().get_or_create(
        workflow=WORKFLOW, business_key=business_key
    )
    if not isinstance(run.context, dict):
        run.context = {}
    return run


def _merge_encounter(run: WorkflowRun, event: CanonicalEvent) -> None:
    run.context.setdefault("source_system", event.source)
    for key, value in event.data.items():
        if key in _RESERVED:
            continue
        run.context[key] = _merged(run.context.get(key), value)
    _refresh_run_columns(run)


def _merged(old: Any, new: Any) -> Any:
    if new in (None, "", [], {}):
        return old
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for key, value in new.items():
            out[key] = _merged(old.get(key), value)
        return out
    return new


def _refresh_run_columns(run: WorkflowRun) -> None:
    c = run.context
    run.facility = str(c.get("facility") or run.facility or "")[:80]
    run.patient_class = str(c.get("patient_class") or run.patient_class or "")[:10]
    coverage = c.get("coverage") or {}
    run.payer = str(coverage.get("payer_name") or coverage.get("payer_id") or run.payer or "")[:120]
    run.amount = total_charges(c)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _when(value: Any) -> datetime | None:
    return parse_datetime(str(value)) if value else None


def _step(
    run: WorkflowRun,
    step: str,
    occurred_at: datetime | None,
    *,
    event: CanonicalEvent | None = None,
    delivery: Delivery | None = None,
    note: str = "",
) -> None:
    """Record a step once (the first time it is reached) and make it the run's current step."""
    if run.pk is None:
        run.save()
    WorkflowStep.objects.get_or_create(
        run=run,
        step=step,
        defaults={
            "occurred_at": occurred_at or timezone.now(),
            "event": event,
            "delivery": delivery,
            "note": note[:300],
        },
    )
    run.step = step


def _raise_missing_data(run: WorkflowRun, missing: list[str], *, event: CanonicalEvent | None) -> None:
    reason = missing_reason(run.business_key, missing)
    fix_fields = [field for name, fields in REQUIREMENTS if name in missing for field in fields]
    detail = {"missing": missing, "fix_fields": fix_fields}
    fields = {
        "reason": reason,
        "detail": detail,
        "facility": run.facility,
        "payer": run.payer,
        "amount": run.amount,
    }
    existing = (
        ExceptionItem.objects.open()
        .filter(workflow=WORKFLOW, business_key=run.business_key, kind=ExceptionKind.MISSING_DATA)
        .first()
    )
    if existing is not None:
        for name, value in fields.items():
            setattr(existing, name, value)
        existing.save()
    else:
        ExceptionItem.objects.create(
            kind=ExceptionKind.MISSING_DATA,
            workflow=WORKFLOW,
            business_key=run.business_key,
            event=event,
            message=event.message if event is not None else None,
            **fields,
        )
    run.status = RunStatus.BLOCKED
    run.save()
    logger.info("run %s blocked: %s missing", run.pk, len(missing))


def _resolve_missing_data(run: WorkflowRun, note: str) -> None:
    open_items = ExceptionItem.objects.open().filter(
        workflow=WORKFLOW, business_key=run.business_key, kind=ExceptionKind.MISSING_DATA
    )
    for item in open_items:
        item.status = ExceptionStatus.RESOLVED
        item.resolved_at = timezone.now()
        item.resolution_note = note
        item.save(update_fields=["status", "resolved_at", "resolution_note", "updated_at"])
