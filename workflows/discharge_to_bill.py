"""Discharge-to-bill: discharge → account complete → claim to the RCM → accrual journal to the ERP.

One WorkflowRun per encounter (business key = encounter id). Its context is the account as known so far:
the encounter data merged from encounter.admitted and encounter.discharged (later non-empty values win),
the charges by charge id, fixes people made from the exception queue, and the ids the destinations gave back.

Steps (declared in workflows/definitions.py): admitted → charges_posted → discharged → documentation_completed
→ coding_completed → bill_hold_released → claim_ready (accrual requested) → claim_submitted / accrual_posted
(completed: billed) → claim_accepted / claim_rejected → paid / denied → cash_posted. A cancel-discharge (A13) puts
the run back to admitted; a charge posted after the claim went out is flagged late and sent on a corrected claim
(frequency 7, next idempotency version). Coding and a bill hold are waited for when the settings
HEALTHSYNC_REQUIRE_CODING / HEALTHSYNC_BILL_HOLD_DAYS ask for them (default: neither).
A discharge the RCM cannot bill (no insurance, diagnosis, attending or financial class) blocks the run with a
missing_data exception naming what is missing and the fields that fix it; retrying it with the fixes sends the
claim. Idempotency keys make every effect happen once however often events or retries repeat.

Within a processing chunk (healthsync.unitofwork) the runs of every encounter the chunk's events name are
locked, or started, together on the first event and kept in the chunk's identity map, so the next message of
an encounter works on the object the previous one changed; run saves and new steps are written once at the
chunk's end. Whatever reads steps, runs or deliveries back from the table calls `flush()` first.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.db import connection
from django.db.models import OuterRef
from django.db.models.signals import post_save
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from healthsync.choices import DeliveryStatus, ExceptionKind, ExceptionStatus, RunStatus
from healthsync.deliveries import connector_for_operation, delivery_request, delivery_reset
from healthsync.inserts import insert_if_new, insert_many_if_new, insert_rows, update_rows
from healthsync.models import CanonicalEvent, Delivery, ExceptionItem
from healthsync.registry import workflow_registry
from healthsync.unitofwork import current, flush, snapshot
from workflows.exceptions import exception_raise_or_refresh, exceptions_read_ahead, open_exceptions
from workflows.models import ReimbursementRate, WorkflowRun, WorkflowStep

if TYPE_CHECKING:
    from datetime import datetime

    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

WORKFLOW = "discharge_to_bill"
CLAIM_OPERATION = "submit_claim"
ACCRUAL_OPERATION = "post_accrual"
JOURNAL_OPERATION = "post_journal"
FORECAST_OPERATION = "post_forecast"
# The reimbursement rate table's default row, for payers without a contract rate of their own.
DEFAULT_PAYER = "*"
RECEIVABLE_ACCOUNT = ("1200", "Patient accounts receivable")
PATIENT_RECEIVABLE_ACCOUNT = ("1210", "Patient responsibility receivable")
REVENUE_ACCOUNT = ("4000", "Patient service revenue")
CASH_ACCOUNT = ("1000", "Cash")
ADJUSTMENT_ACCOUNT = ("4900", "Contractual adjustments")
REMITTANCE_WORKFLOW = "remittance"
# Context keys the workflow owns; encounter data never overwrites them.
_RESERVED = {
    "charges",
    "claim_id",
    "claim_delivery_id",
    "journal_document_number",
    "source_system",
    "fixes",
    "claim_version",
    "late_charges",
    "correction_pending",
    "corrected_claims",
    "remits",
    "bill_hold_until",
    "accrual_key",
    "accrued",
    "forecast",
    "voided_claims",
}

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
        ("encounter.discharge_cancelled", on_discharge_cancelled),
        ("documentation.completed", on_documentation_completed),
        ("coding.completed", on_coding_completed),
        ("claim.accepted", on_claim_accepted),
        ("claim.rejected", on_claim_rejected),
        ("claim.paid", on_claim_paid),
        ("claim.denied", on_claim_denied),
        ("remittance.received", on_remittance_received),
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
    _save(run)


def on_charges_posted(event: CanonicalEvent) -> None:
    run = _run_for(event.subject)
    run.context.setdefault("source_system", event.source)
    charges = run.context.setdefault("charges", {})
    billed = bool(run.context.get("claim_delivery_id"))
    late = []
    for charge in event.data.get("charges", []):
        # Keyed by FT1-2 so that a charge sent twice counts once.
        charge_id = str(charge.get("charge_id"))
        if billed and charge_id not in charges:
            charge = {**charge, "late": True}
            late.append(charge_id)
        charges[charge_id] = charges.get(charge_id, charge) if billed else charge
    run.amount = total_charges(run.context)
    if not run.facility and event.data.get("facility"):
        run.facility = str(event.data["facility"])[:80]
    _step(run, "charges_posted", event.occurred_at or timezone.now(), event=event)
    if late:
        # After the final bill: flag them and send them on a corrected claim, never on the original.
        run.context.setdefault("late_charges", []).extend(late)
        _step(
            run, "late_charge_posted", event.occurred_at or timezone.now(), event=event, note=", ".join(late)
        )
        run.context["correction_pending"] = True
        _save(run)
        _send_correction_if_due(run, event=event)
    _save(run)


def on_discharged(event: CanonicalEvent) -> None:
    run = _run_for(event.subject)
    _merge_encounter(run, event)
    _step(run, "discharged", _when(event.data.get("discharged_at")) or event.occurred_at, event=event)
    if run.status in (RunStatus.COMPLETED, RunStatus.CANCELLED) or run.context.get("claim_delivery_id"):
        _save(run)
    # Otherwise advance() saves the run whichever way it goes.
    advance(run, event=event)


def _ask(
    run: WorkflowRun, operation: str, payload: dict[str, Any], key: str, *, event: CanonicalEvent | None
) -> Delivery:
    """Ask, once per idempotency key, for one effect of this account at the destination offering `operation`."""
    return delivery_request(
        connector=connector_for_operation(operation),
        operation=operation,
        payload=payload,
        idempotency_key=key,
        workflow=WORKFLOW,
        business_key=run.business_key,
        event=event,
    )


def advance(run: WorkflowRun, *, event: CanonicalEvent | None = None, now: datetime | None = None) -> None:
    """Check the account and, once it is complete, ask the RCM for the claim (once)."""
    if run.status in (RunStatus.COMPLETED, RunStatus.CANCELLED) or run.context.get("claim_delivery_id"):
        return
    if not _has_step(run, "discharged"):
        return
    missing = missing_requirements(run.context)
    if missing:
        _raise_missing_data(run, missing, event=event)
        return
    if run.status == RunStatus.BLOCKED and not _open_exceptions(run).exists():
        run.status = RunStatus.ACTIVE
    if require_coding() and not _has_step(run, "coding_completed"):
        _save(run)
        return
    hold_days = bill_hold_days()
    if hold_days:
        flush()  # the discharge step may still be waiting in the chunk's unit of work
        discharged = run.steps.get(step="discharged").occurred_at
        hold_until = discharged + timedelta(days=hold_days)
        if (now or timezone.now()) < hold_until:
            run.context["bill_hold_until"] = hold_until.isoformat()
            _save(run)
            return
        _step(run, "bill_hold_released", hold_until, event=event)
    _step(run, "claim_ready", timezone.now(), event=event)
    run.status = RunStatus.ACTIVE
    encounter_id = run.business_key
    source = run.context.get("source_system") or (event.source if event else "unknown")
    # Version 1 for the first claim; a claim after a void (A13 then A03 again) takes the next version.
    version = int(run.context.get("claim_version") or 0) + 1
    delivery = _ask(
        run, CLAIM_OPERATION, claim_payload(run), f"{source}:claim:{encounter_id}:{version}", event=event
    )
    run.context["claim_delivery_id"] = delivery.pk
    run.context["claim_version"] = version
    if run.amount > 0:
        # The revenue is accrued when the claim is ready, not when the payer answers.
        key = f"{source}:accrual:{encounter_id}:{version}"
        _ask(run, ACCRUAL_OPERATION, accrual_payload(run, key), key, event=event)
        run.context["accrual_key"] = key
        run.context["accrued"] = str(run.amount)
        _request_forecast(run, f"{source}:forecast:{encounter_id}:{version}", event=event)
    _save(run)


def require_coding() -> bool:
    """Whether a claim waits for coding.completed (BAR^P05); off by default, as the demo EHR sends none."""
    return bool(getattr(settings, "HEALTHSYNC_REQUIRE_CODING", False))


def bill_hold_days() -> int:
    """Days after discharge before the claim may go (late charges and coding catch up); 0 by default."""
    return int(getattr(settings, "HEALTHSYNC_BILL_HOLD_DAYS", 0) or 0)


def release_bill_holds(now: datetime | None = None) -> int:
    """Carry on runs whose bill hold has ended (run from a schedule); returns how many were looked at."""
    now = now or timezone.now()
    count = 0
    waiting = WorkflowRun.objects.filter(workflow=WORKFLOW, status=RunStatus.ACTIVE, steps__step="discharged")
    for run_id in waiting.exclude(steps__step="claim_ready").values_list("id", flat=True):
        run = WorkflowRun.objects.select_for_update().get(pk=run_id)
        until = _when(run.context.get("bill_hold_until"))
        if until is None or until <= now:
            advance(run, now=now)
            count += 1
    return count


# Delivery outcomes ----------------------------------------------------------------------------------------


def on_delivery(delivery: Delivery) -> None:
    run = _run_for(delivery.business_key)
    if delivery.status == DeliveryStatus.FAILED:
        run.status = RunStatus.BLOCKED
        _save(run)
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
        if (delivery.payload or {}).get("claim_frequency") == "8":
            for void in run.context.get("voided_claims", []):
                if void.get("key") == delivery.idempotency_key:
                    void["void_claim_id"] = delivery.external_id
            _record(run, "claim_voided", delivery=delivery, note=delivery.external_id)
            _save(run)
            return
        if (delivery.payload or {}).get("claim_frequency") == "7":
            run.context.setdefault("corrected_claims", []).append(delivery.external_id)
            _step(
                run, "corrected_claim_submitted", timezone.now(), delivery=delivery, note=delivery.external_id
            )
            _save(run)
            return
        run.context["claim_id"] = delivery.external_id
        _step(run, "claim_submitted", timezone.now(), delivery=delivery, note=delivery.external_id)
        _resolve_missing_data(run, f"Claim {delivery.external_id} submitted to the RCM.")
        if run.amount <= 0 or _has_step(run, "accrual_posted"):
            _complete(run)
        _save(run)
        if run.context.get("correction_pending"):
            _send_correction_if_due(run, event=delivery.event)
    elif delivery.operation == ACCRUAL_OPERATION:
        if ":accrual-reversal:" in delivery.idempotency_key:
            _record(run, "accrual_reversed", delivery=delivery, note=delivery.external_id)
            _save(run)
            return
        main_key = run.context.get("accrual_key")
        if delivery.idempotency_key != main_key and (main_key or not delivery.idempotency_key.endswith(":1")):
            run.context.setdefault("accrual_adjustments", []).append(delivery.external_id)
            _save(run)
            return
        run.context["journal_document_number"] = delivery.external_id
        _step(run, "accrual_posted", timezone.now(), delivery=delivery, note=delivery.external_id)
        if _has_step(run, "claim_submitted"):
            _complete(run)
        _save(run)
    elif delivery.operation == FORECAST_OPERATION:
        forecast = run.context.get("forecast") or {}
        if delivery.idempotency_key == forecast.get("key"):
            forecast["document_number"] = delivery.external_id
            _record(run, "forecast_posted", delivery=delivery, note=delivery.external_id)
        elif ":trueup:" in delivery.idempotency_key:
            _record(run, "forecast_trued_up", delivery=delivery, note=delivery.external_id)
        _save(run)
    elif delivery.operation == JOURNAL_OPERATION and ":cash:" in delivery.idempotency_key:
        remits = run.context.setdefault("remits", {})
        trace = str((delivery.payload or {}).get("trace_number", ""))
        remits.setdefault(trace, {})["document_number"] = delivery.external_id
        _step(run, "cash_posted", timezone.now(), delivery=delivery, note=delivery.external_id)
        _save(run)
        _remittance_posted(trace, delivery)


def _complete(run: WorkflowRun) -> None:
    run.status = RunStatus.COMPLETED
    run.completed_at = run.completed_at or timezone.now()


# Retries from the exception queue ------------------------------------------------------------------------


def on_retry(exception: ExceptionItem, fixes: dict[str, str], actor: User) -> None:
    """Apply people's fixes to the run (never to the source message or event) and carry the work on."""
    run = _run_for(exception.business_key)
    if fixes:
        apply_fixes(run, fixes, actor)
        _save(run)
    if exception.delivery_id is not None:
        delivery = exception.delivery
        assert delivery is not None
        if fixes and delivery.operation == CLAIM_OPERATION and delivery.status == DeliveryStatus.FAILED:
            # The RCM never accepted this claim, so the same key may carry the corrected payload.
            delivery.payload = claim_payload(run)
            delivery.save(update_fields=["payload"])
            # The refreshed claim carries every charge so far: no late charge is left for a correction.
            run.context["correction_pending"] = False
            _save(run)
        delivery_reset(delivery=delivery)
        if run.status == RunStatus.BLOCKED:
            run.status = RunStatus.ACTIVE
            _save(run)
        return
    advance(run, event=exception.event)


def on_exception_closed(exception: ExceptionItem, actor: User | None = None) -> None:
    """A resolved or ignored exception lets its run move on when nothing else blocks it."""
    if exception.workflow != WORKFLOW or not exception.business_key:
        return
    run = (
        WorkflowRun.objects.select_for_update()
        .filter(workflow=WORKFLOW, business_key=exception.business_key)
        .first()
    )
    if run is None or run.status != RunStatus.BLOCKED or _open_exceptions(run).exists():
        return
    run.status = RunStatus.ACTIVE
    _save(run)
    if not missing_requirements(run.context):
        advance(run, event=exception.event)


def _open_exceptions(run: WorkflowRun) -> Any:
    return open_exceptions(run.workflow, run.business_key)


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


def accrual_payload(
    run: WorkflowRun, external_reference: str, *, amount: Decimal | None = None, reverse: bool = False
) -> dict[str, Any]:
    """A balanced revenue accrual: debit receivables, credit revenue, for the account's charges.

    reverse=True swaps the sides: the reversal of a voided claim's accrual.
    """
    amount = str(total_charges(run.context) if amount is None else amount)
    discharged = _when(run.context.get("discharged_at")) or timezone.now()
    cost_center = run.facility or run.context.get("facility", "")
    debit, credit = (
        (REVENUE_ACCOUNT, RECEIVABLE_ACCOUNT) if reverse else (RECEIVABLE_ACCOUNT, REVENUE_ACCOUNT)
    )
    what = "Reversal of revenue accrual" if reverse else "Revenue accrual"
    return {
        "external_reference": external_reference,
        "journal_date": discharged.date().isoformat(),
        "period": discharged.strftime("%Y-%m"),
        "currency": "USD",
        "description": f"{what}, encounter {run.business_key}, claim {run.context.get('claim_id', '')}",
        "source_document": run.context.get("claim_id", ""),
        "lines": [
            {
                "account": debit[0],
                "account_name": debit[1],
                "cost_center": cost_center,
                "debit": amount,
                "credit": "0.00",
            },
            {
                "account": credit[0],
                "account_name": credit[1],
                "cost_center": cost_center,
                "debit": "0.00",
                "credit": amount,
            },
        ],
    }


# Cancel discharge, documentation, coding ----------------------------------------------------------------


def on_discharge_cancelled(event: CanonicalEvent) -> None:
    """A13: the patient is back in house; the account leaves DNFB and its discharge exceptions are withdrawn."""
    run = _run_for(event.subject)
    flush()  # steps are deleted and upserted below: the chunk's pending ones must be in the table first
    when = _when(event.data.get("cancelled_at")) or event.occurred_at or timezone.now()
    claim = _claim_delivery(run)
    in_flight = None
    if claim is not None and claim.status == DeliveryStatus.SUCCEEDED:
        # The payer already has the claim: void it and reverse what the ERP was told, then wait for the
        # discharge again; the next A03 sends a replacement claim under the next version.
        _take_back_claim(run, event=event, sent=True)
    elif claim is not None and _withdraw(claim.idempotency_key):
        # The claim never left (queued, waiting to retry, or failed): it is withdrawn, never sent.
        _take_back_claim(run, event=event, sent=False)
        WorkflowStep.objects.update_or_create(
            run=run, step="claim_withdrawn", defaults={"occurred_at": timezone.now(), "event": event}
        )
    else:
        in_flight = claim
    run.steps.filter(step__in=UNDONE_BY_CANCEL).delete()
    _forget_steps(run)
    WorkflowStep.objects.update_or_create(
        run=run, step="discharge_cancelled", defaults={"occurred_at": when, "event": event, "note": "A13"}
    )
    for key in ("discharged_at", "disposition", "bill_hold_until"):
        run.context.pop(key, None)
    run.step = "admitted"
    run.status = RunStatus.ACTIVE
    for item in _open_exceptions(run):
        item.status = ExceptionStatus.RESOLVED
        item.resolved_at = timezone.now()
        item.resolution_note = "Withdrawn: the discharge was cancelled (ADT^A13)."
        item.save(update_fields=["status", "resolved_at", "resolution_note", "updated_at"])
    if in_flight is not None:
        # Being sent right now: whether the payer got it is known only afterwards, so a person decides.
        _raise(
            run,
            ExceptionKind.MISMATCH,
            f"The discharge of {run.business_key} was cancelled (ADT^A13) while its claim was being sent to "
            "the RCM: check whether the payer received it, and void it there if so.",
            {"claim_delivery_id": in_flight.pk},
            event=event,
        )
    _save(run)


# Steps a cancelled discharge undoes: they are reached again by the next discharge and its claim.
UNDONE_BY_CANCEL = [
    "discharged",
    "bill_hold_released",
    "claim_ready",
    "claim_submitted",
    "accrual_posted",
    "forecast_posted",
    "late_charge_posted",
    "corrected_claim_submitted",
    "claim_accepted",
]


WITHDRAWN = "Withdrawn before it was sent: the discharge was cancelled (ADT^A13)."


def _withdraw(idempotency_key: str | None) -> bool:
    """Stop an effect that has not gone out (queued, waiting to retry, or failed); False if sent or being sent.

    One conditional UPDATE: a worker claims a delivery only from pending/retrying, so the two cannot both win.
    """
    if not idempotency_key:
        return False
    flush()  # a delivery asked for earlier in the chunk may not be written yet
    unsent = [DeliveryStatus.PENDING, DeliveryStatus.RETRYING, DeliveryStatus.FAILED]
    return bool(
        Delivery.objects.filter(idempotency_key=idempotency_key, status__in=unsent)
        .exclude(status=DeliveryStatus.FAILED, last_error=WITHDRAWN)
        .update(status=DeliveryStatus.FAILED, next_attempt_at=None, last_error=WITHDRAWN)
    )


def _take_back_claim(run: WorkflowRun, *, event: CanonicalEvent | None, sent: bool) -> None:
    """Void the submitted claim (frequency 8) — or, never sent, just forget it — and take back what the ERP was
    told: an accrual or forecast still queued is withdrawn, one already posted is reversed; each exactly once."""
    source = run.context.get("source_system", "unknown")
    version = int(run.context.get("claim_version") or 1)
    claim_id = run.context.get("claim_id", "")
    void_key = ""
    if sent:
        void_key = f"{source}:void:{run.business_key}:{version}"
        payload = claim_payload(run)
        payload["claim_frequency"] = "8"
        payload["original_claim_id"] = claim_id
        _ask(run, CLAIM_OPERATION, payload, void_key, event=event)
    accrued = _accrued_total(run)
    reversal_key = ""
    if accrued > 0 and not _withdraw(run.context.get("accrual_key")):
        reversal_key = f"{source}:accrual-reversal:{run.business_key}:{version}"
        reversal = accrual_payload(run, reversal_key, amount=accrued, reverse=True)
        _ask(run, ACCRUAL_OPERATION, reversal, reversal_key, event=event)
    forecast = run.context.get("forecast") or {}
    if forecast.get("key") and not _withdraw(forecast["key"]):
        _post_forecast_change(run, "reversal", -_decimal(forecast.get("expected")), version, event=event)
    run.context.setdefault("voided_claims" if sent else "withdrawn_claims", []).append(
        {
            "claim_id": claim_id,
            "version": version,
            "key": void_key,
            "accrual_reversal_key": reversal_key,
            "amount": str(accrued),
        }
    )
    for key in (
        "claim_delivery_id",
        "claim_id",
        "journal_document_number",
        "accrual_key",
        "accrued",
        "forecast",
    ):
        run.context.pop(key, None)
    run.context["accrual_versions"] = []
    run.context["correction_pending"] = False
    run.completed_at = None


def _accrued_total(run: WorkflowRun) -> Decimal:
    """What the ERP holds accrued for the current claim: the claim-ready accrual plus late-charge accruals."""
    if run.context.get("accrued") is not None:
        accrued = _decimal(run.context["accrued"])
    else:
        claim = _claim_delivery(run)
        accrued = _decimal((claim.payload or {}).get("total_charges") if claim else 0)
    for delta in run.context.get("accrual_versions", []):
        accrued += _decimal(delta)
    return accrued


# Expected reimbursement -------------------------------------------------------------------------------------


def reimbursement_percent(payer_id: str) -> tuple[Decimal, str] | None:
    """(percent of charges, basis): the payer's governed contract rate, else the table's default row ("*").

    None when neither exists: no forecast is posted (the accrual still is).
    """
    rates = snapshot("workflows.reimbursement_rates", _active_rates)
    if payer_id in rates:
        return rates[payer_id], f"contract rate {payer_id}"
    if DEFAULT_PAYER in rates:
        return rates[DEFAULT_PAYER], "default rate"
    return None


def _active_rates() -> dict[str, Decimal]:
    # The whole (small, governed) table: read once per processing batch rather than once per discharge.
    return dict(ReimbursementRate.objects.filter(is_active=True).values_list("payer_id", "percent"))


def _request_forecast(run: WorkflowRun, key: str, *, event: CanonicalEvent | None) -> None:
    """Tell the ERP what the payer is expected to pay for the claim (once per claim version)."""
    payer_id = str((run.context.get("coverage") or {}).get("payer_id") or "")
    rate = reimbursement_percent(payer_id)
    if rate is None:
        return
    percent, basis = rate
    expected = (run.amount * percent / 100).quantize(Decimal("0.01"))
    payload = _forecast_payload(run, key, "forecast", expected)
    payload.update({"billed": str(run.amount), "percent": str(percent), "basis": basis})
    _ask(run, FORECAST_OPERATION, payload, key, event=event)
    run.context["forecast"] = {"key": key, "expected": str(expected), "percent": str(percent), "basis": basis}


def _post_forecast_change(
    run: WorkflowRun,
    kind: str,
    amount: Decimal,
    version: int,
    *,
    event: CanonicalEvent | None,
    suffix: str = "",
) -> None:
    """A true-up (actual minus expected, at remittance) or a reversal (the claim was voided) of the forecast.

    `suffix` (a later remittance's trace number) keys a further true-up of the same claim version apart.
    """
    forecast = run.context.get("forecast") or {}
    source = run.context.get("source_system", "unknown")
    key = f"{source}:{'trueup' if kind == 'true_up' else 'forecast-reversal'}:{run.business_key}:{version}"
    key += f":{suffix}" if suffix else ""
    payload = _forecast_payload(run, key, kind, amount)
    payload["forecast_reference"] = forecast.get("key", "")
    _ask(run, FORECAST_OPERATION, payload, key, event=event)


def _forecast_payload(run: WorkflowRun, key: str, kind: str, amount: Decimal) -> dict[str, Any]:
    coverage = run.context.get("coverage") or {}
    when = _when(run.context.get("discharged_at")) or timezone.now()
    return {
        "external_reference": key,
        "kind": kind,
        "amount": f"{amount:.2f}",
        "currency": "USD",
        "period": when.strftime("%Y-%m"),
        "encounter": run.business_key,
        "claim_id": run.context.get("claim_id", ""),
        "payer_id": coverage.get("payer_id", ""),
        "cost_center": run.facility or run.context.get("facility", ""),
    }


def _record(
    run: WorkflowRun,
    step: str,
    *,
    event: CanonicalEvent | None = None,
    delivery: Delivery | None = None,
    note: str = "",
) -> None:
    """Record (or refresh, when it happens again) a side step without moving the run's current step."""
    flush()
    WorkflowStep.objects.update_or_create(
        run=run,
        step=step,
        defaults={"occurred_at": timezone.now(), "event": event, "delivery": delivery, "note": note[:300]},
    )
    _forget_steps(run)


def on_documentation_completed(event: CanonicalEvent) -> None:
    run = _run_for(event.subject)
    _step(
        run, "documentation_completed", _when(event.data.get("signed_at")) or event.occurred_at, event=event
    )
    _save(run)


def on_coding_completed(event: CanonicalEvent) -> None:
    """BAR^P05: the final codes replace the working ones; a coded, discharged account may bill."""
    run = _run_for(event.subject)
    if event.data.get("diagnoses"):
        run.context["diagnoses"] = event.data["diagnoses"]
    for key in ("procedures", "drg"):
        if event.data.get(key):
            run.context[key] = event.data[key]
    _step(run, "coding_completed", _when(event.data.get("coded_at")) or event.occurred_at, event=event)
    _save(run)
    advance(run, event=event)


def _send_correction_if_due(run: WorkflowRun, *, event: CanonicalEvent | None) -> None:
    """Send late charges on a replacement claim (frequency 7) once the original claim is at the RCM."""
    claim = _claim_delivery(run)
    if claim is None or claim.status != DeliveryStatus.SUCCEEDED:
        return
    version = int(run.context.get("claim_version") or 1) + 1
    source = run.context.get("source_system", "unknown")
    payload = claim_payload(run)
    payload["claim_frequency"] = "7"
    payload["original_claim_id"] = run.context.get("claim_id", "")
    _ask(run, CLAIM_OPERATION, payload, f"{source}:claim:{run.business_key}:{version}", event=event)
    delta = total_charges(run.context) - _accrued_total(run)
    if delta > 0:
        key = f"{source}:accrual:{run.business_key}:{version}"
        adjustment = accrual_payload(run, key, amount=delta)
        adjustment["description"] = (
            f"Late charge accrual, encounter {run.business_key}, claim version {version}"
        )
        _ask(run, ACCRUAL_OPERATION, adjustment, key, event=event)
        run.context.setdefault("accrual_versions", []).append(str(delta))
    run.context["claim_version"] = version
    run.context["correction_pending"] = False
    _save(run)


# Claim lifecycle and remittance (events from the RCM: 999/277CA/835 mapped by their own connector) -------


def _run_for_claim(event: CanonicalEvent) -> WorkflowRun | None:
    data = event.data
    key = str(data.get("patient_control_number") or (event.correlation or {}).get("encounter") or "")
    tracked = _tracked_runs()
    if key and tracked is not None and key in tracked:
        return tracked[key]
    flush()  # the claim id is looked up in the table: the chunk's run updates go first
    runs = WorkflowRun.objects.select_for_update().filter(workflow=WORKFLOW)
    run = runs.filter(business_key=key).first() if key else None
    claim_id = str(data.get("claim_id") or "")
    if run is None and claim_id:
        run = runs.filter(context__claim_id=claim_id).first()
    if run is not None and tracked is not None and run.business_key in tracked:
        # The chunk already holds this run: go on with that object, never with a second copy of the row.
        return tracked[run.business_key]
    if run is None:
        ExceptionItem.objects.create(
            kind=ExceptionKind.MISMATCH,
            workflow=WORKFLOW,
            business_key=key or claim_id or event.subject,
            event=event,
            message=event.message,
            reason=f"{event.type} for claim {claim_id or '?'} matches no account HealthSync knows.",
            detail={"claim_id": claim_id, "patient_control_number": key},
            amount=_decimal(data.get("paid_amount") or data.get("amount")),
        )
        return None
    if not isinstance(run.context, dict):
        run.context = {}
    return run


def on_claim_accepted(event: CanonicalEvent) -> None:
    run = _run_for_claim(event)
    if run is None:
        return
    # The payer's acknowledgement of our void (frequency 8) is not the claim being accepted again.
    step = "void_accepted" if str(event.data.get("claim_frequency") or "") == "8" else "claim_accepted"
    _step(run, step, event.occurred_at, event=event, note=str(event.data.get("status_code", "")))
    _save(run)


def on_claim_rejected(event: CanonicalEvent) -> None:
    run = _run_for_claim(event)
    if run is None:
        return
    codes = event.data.get("reasons") or event.data.get("status_codes") or []
    _step(run, "claim_rejected", event.occurred_at, event=event, note=", ".join(map(str, codes)))
    _raise(
        run,
        ExceptionKind.DESTINATION_REJECTED,
        f"The payer rejected claim {run.context.get('claim_id', '')} for encounter {run.business_key}"
        + (f": {', '.join(map(str, codes))}" if codes else ""),
        {"reasons": codes},
        event=event,
    )


def on_claim_denied(event: CanonicalEvent) -> None:
    run = _run_for_claim(event)
    if run is None:
        return
    codes = [f"{a.get('group', '')}-{a.get('reason', '')}" for a in event.data.get("adjustments") or []]
    _step(run, "denied", event.occurred_at, event=event, note=", ".join(codes))
    # Nothing (or only the patient's share) will come from the payer: the forecast is trued up to that.
    _settle_forecast(run, event.data, event=event)
    trace = str(event.data.get("trace_number") or "")
    if trace:
        # A denial posts no cash, yet it settles its line of the remittance all the same.
        _remittance_settled(trace, denied=str(event.data.get("claim_id") or run.business_key))
    _raise(
        run,
        ExceptionKind.DESTINATION_REJECTED,
        f"The payer denied claim {run.context.get('claim_id', '')} for encounter {run.business_key}"
        + (f" ({', '.join(codes)})" if codes else "")
        + ": appeal or correct and resubmit.",
        {"reasons": codes},
        event=event,
    )


def _settle_forecast(run: WorkflowRun, remit: dict[str, Any], *, event: CanonicalEvent | None) -> None:
    """The first remittance of the claim, paid or denied, settles the forecast: the difference is its true-up.

    A later remittance with another trace number (an appeal paid after a denial, a corrected payment) trues up
    again by what it changes; the same remittance seen twice changes nothing.
    """
    forecast = run.context.get("forecast") or {}
    if not forecast.get("key"):
        return
    actual = _decimal(remit.get("paid_amount")) + _decimal(remit.get("patient_responsibility"))
    trace = str(remit.get("trace_number") or "")
    version = int(run.context.get("claim_version") or 1)
    if not forecast.get("trued_up"):
        difference = actual - _decimal(forecast.get("expected"))
        forecast.update(
            {"trued_up": True, "actual": str(actual), "difference": str(difference), "traces": [trace]}
        )
        _post_forecast_change(run, "true_up", difference, version, event=event)
        return
    traces = forecast.setdefault("traces", [])
    change = actual - _decimal(forecast.get("actual"))
    if trace in traces or not change:
        return
    traces.append(trace)
    forecast.update({"actual": str(actual), "difference": str(actual - _decimal(forecast.get("expected")))})
    _post_forecast_change(run, "true_up", change, version, event=event, suffix=trace)


def on_claim_paid(event: CanonicalEvent) -> None:
    """835 CLP with a payment: post cash, contractual adjustments and patient share to the ERP, once per remit."""
    run = _run_for_claim(event)
    if run is None:
        return
    data = event.data
    trace = str(data.get("trace_number") or event.source_ref)
    _step(run, "paid", _when(data.get("payment_date")) or event.occurred_at, event=event, note=trace)
    run.context.setdefault("remits", {}).setdefault(trace, {"paid_amount": str(data.get("paid_amount", ""))})
    source = run.context.get("source_system", "unknown")
    claim_id = str(data.get("claim_id") or run.context.get("claim_id") or run.business_key)
    key = f"{source}:cash:{claim_id}:{trace}"
    payload = cash_payload(run, data, key, trace)
    _settle_forecast(run, data, event=event)
    _save(run)
    if payload is None:
        return
    _ask(run, JOURNAL_OPERATION, payload, key, event=event)


def on_remittance_received(event: CanonicalEvent) -> None:
    """An 835 payment: one remittance run per trace number, completed when each of its claims is posted."""
    data = event.data
    trace = str(data.get("trace_number") or event.subject)
    run, _ = WorkflowRun.objects.select_for_update().get_or_create(
        workflow=REMITTANCE_WORKFLOW, business_key=trace
    )
    run.context = {**(run.context or {}), **{k: v for k, v in data.items() if k != "claims"}}
    run.payer = str(data.get("payer") or "")[:120]
    run.amount = _decimal(data.get("amount"))
    _step(run, "received", _when(data.get("payment_date")) or event.occurred_at, event=event)
    _save(run)
    for claim in data.get("claims") or []:
        # Claims carried inside the remittance go the same way as a separate claim.paid event.
        if isinstance(claim, dict) and _decimal(claim.get("paid_amount")) > 0:
            proxy = CanonicalEvent(
                type="claim.paid",
                source=event.source,
                subject=str(claim.get("patient_control_number") or ""),
                occurred_at=event.occurred_at,
                source_ref=event.source_ref,
                correlation={},
                data={**claim, "trace_number": trace, "payment_date": data.get("payment_date", "")},
                message=event.message,
            )
            proxy.pk = event.pk
            on_claim_paid(proxy)


def _remittance_posted(trace: str, delivery: Delivery) -> None:
    _remittance_settled(trace, posted=delivery.external_id, delivery=delivery)


def _remittance_settled(
    trace: str, *, posted: str = "", denied: str = "", delivery: Delivery | None = None
) -> None:
    """One claim line of the remittance is settled: its cash posted to the ERP, or the claim denied.

    The remittance run completes once every claim it carries is settled, so an 835 with a denial in it
    does not stay open for ever waiting for cash that will never be posted.
    """
    run = (
        WorkflowRun.objects.select_for_update()
        .filter(workflow=REMITTANCE_WORKFLOW, business_key=trace)
        .first()
    )
    if run is None:
        return
    for name, value in (("posted", posted), ("denied", denied)):
        done = run.context.setdefault(name, [])
        if value and value not in done:
            done.append(value)
    posted_ids, denied_ids = run.context["posted"], run.context["denied"]
    expected = int(run.context.get("claim_count") or 1)
    if len(posted_ids) + len(denied_ids) >= expected and run.status != RunStatus.COMPLETED:
        note = ", ".join(posted_ids) + (f"; denied {', '.join(denied_ids)}" if denied_ids else "")
        _step(run, "posted", timezone.now(), delivery=delivery, note=note)
        run.status = RunStatus.COMPLETED
        run.completed_at = run.completed_at or timezone.now()
    _save(run)


def cash_payload(run: WorkflowRun, data: dict[str, Any], key: str, trace: str) -> dict[str, Any] | None:
    """Cash to the bank, contractual adjustments to their contra-revenue account, patient share reclassed."""
    paid = _decimal(data.get("paid_amount"))
    patient = _decimal(data.get("patient_responsibility"))
    contractual = sum(
        (
            _decimal(a.get("amount"))
            for a in data.get("adjustments") or []
            if a.get("group") in ("CO", "OA", "PI")
        ),
        Decimal("0.00"),
    )
    cost_center = run.facility or run.context.get("facility", "")
    lines = []
    for (account, name), debit in (
        (CASH_ACCOUNT, paid),
        (ADJUSTMENT_ACCOUNT, contractual),
        (PATIENT_RECEIVABLE_ACCOUNT, patient),
    ):
        if debit > 0:
            lines.append(_line(account, name, cost_center, debit=debit))
    total = paid + contractual + patient
    if total <= 0:
        return None
    lines.append(_line(RECEIVABLE_ACCOUNT[0], RECEIVABLE_ACCOUNT[1], cost_center, credit=total))
    paid_on = _when(data.get("payment_date")) or timezone.now()
    return {
        "external_reference": key,
        "journal_date": paid_on.date().isoformat(),
        "period": paid_on.strftime("%Y-%m"),
        "currency": "USD",
        "description": f"Remittance {trace}, claim {data.get('claim_id') or run.context.get('claim_id', '')}",
        "source_document": trace,
        "trace_number": trace,
        "lines": lines,
    }


def _line(
    account: str, name: str, cost_center: str, *, debit: Decimal = Decimal(0), credit: Decimal = Decimal(0)
) -> dict[str, str]:
    return {
        "account": account,
        "account_name": name,
        "cost_center": cost_center,
        "debit": f"{debit:.2f}",
        "credit": f"{credit:.2f}",
    }


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value or "0")).quantize(Decimal("0.01"))
    except InvalidOperation:
        return Decimal("0.00")


def _claim_delivery(run: WorkflowRun) -> Delivery | None:
    delivery_id = run.context.get("claim_delivery_id")
    if not delivery_id:
        return None
    flush()  # a delivery asked for earlier in the chunk may not be written yet
    return Delivery.objects.filter(pk=delivery_id).first()


def _raise(
    run: WorkflowRun, kind: str, reason: str, detail: dict[str, Any], *, event: CanonicalEvent | None
) -> ExceptionItem:
    """One open exception of a kind per run (not a delivery's own), refreshed when raised again."""
    _read_ahead_exceptions(run)
    item = exception_raise_or_refresh(
        run,
        kind,
        reason,
        detail=detail,
        event=event,
        without_delivery=True,
        facility=run.facility,
        payer=run.payer,
        amount=run.amount,
    )
    _save(run)
    return item


# Internals ------------------------------------------------------------------------------------------------


def _run_for(business_key: str) -> WorkflowRun:
    tracked = _tracked_runs()
    if tracked is not None:
        run = tracked.get(business_key)
        if run is None:
            _read_ahead(tracked)
            run = tracked.get(business_key)
        if run is None:
            run = tracked[business_key] = _load_run(business_key)
        return run
    return _load_run(business_key)


def _load_run(business_key: str) -> WorkflowRun:
    # The row lock orders concurrent events of one encounter (per business key ordering).
    runs = _locked_runs()
    run = runs.filter(workflow=WORKFLOW, business_key=business_key).first()
    created = False
    if run is None:
        # One round trip (INSERT … ON CONFLICT) instead of get_or_create's savepoint, insert and release; a
        # concurrent first event of the same encounter waits on the unique key, then finds the run.
        run = WorkflowRun(workflow=WORKFLOW, business_key=business_key)
        created = insert_if_new(run)
        if not created:
            run = runs.get(workflow=WORKFLOW, business_key=business_key)
    _prime(run, created=created)
    return run


def _locked_runs() -> Any:
    runs = WorkflowRun.objects.select_for_update()
    if connection.vendor == "postgresql":
        # The recorded step names come with the locked row, in the same round trip.
        names = WorkflowStep.objects.filter(run=OuterRef("pk")).values("step")
        runs = runs.select_for_update(of=("self",)).annotate(known_step_names=ArraySubquery(names))
    return runs


def _lock_runs(keys: list[str]) -> dict[str, WorkflowRun]:
    """The existing runs of these keys, locked in id order and primed with their step names, by key.

    What `_locked_runs()` reads, by a statement written once: compiling that queryset for every chunk cost
    more than running it.
    """
    names, converters = _run_columns()
    with connection.cursor() as cursor:
        cursor.execute(_lock_runs_sql(), [WORKFLOW, keys])
        rows = cursor.fetchall()
    runs = {}
    for *values, step_names in rows:
        for index, field_converters in converters:
            for convert in field_converters:
                values[index] = convert(values[index], None, connection)
        run = WorkflowRun.from_db(connection.alias, names, values)
        _prime(run, created=False, step_names=step_names)
        runs[run.business_key] = run
    return runs


@functools.cache
def _run_columns() -> tuple[list[str], list[tuple[int, list[Callable[..., Any]]]]]:
    """The attribute names of a run's columns, in table order, and the converters of those that have any."""
    fields = WorkflowRun._meta.concrete_fields
    converters = [(index, field.get_db_converters(connection)) for index, field in enumerate(fields)]
    return [field.attname for field in fields], [(index, found) for index, found in converters if found]


@functools.cache
def _lock_runs_sql() -> str:
    quote = connection.ops.quote_name
    runs, steps = WorkflowRun._meta, WorkflowStep._meta
    columns = ", ".join(f"r.{quote(field.column)}" for field in runs.concrete_fields)
    step_names = (
        f"ARRAY(SELECT s.{quote(steps.get_field('step').column)} FROM {quote(steps.db_table)} s "  # noqa: S608 (identifiers from the models)
        f"WHERE s.{quote(steps.get_field('run').column)} = r.{quote(runs.pk.column)})"
    )
    return (
        f"SELECT {columns}, {step_names} FROM {quote(runs.db_table)} r "  # noqa: S608 (identifiers from the models)
        f"WHERE r.{quote(runs.get_field('workflow').column)} = %s "
        f"AND r.{quote(runs.get_field('business_key').column)} = ANY(%s::varchar[]) "
        f"ORDER BY r.{quote(runs.pk.column)} FOR UPDATE OF r"
    )


def _prime(run: WorkflowRun, *, created: bool, step_names: list[str] | None = None) -> None:
    if not isinstance(run.context, dict):
        run.context = {}
    # The row lock makes this handler the only writer of the run's steps, so they can be known in memory.
    loaded = step_names if step_names is not None else getattr(run, "known_step_names", None)
    if created:
        setattr(run, _STEPS_ATTR, set())
    elif loaded is not None:
        setattr(run, _STEPS_ATTR, set(loaded))
    else:
        setattr(run, _STEPS_ATTR, _LOAD_STEPS)


# Event types whose handler works on the run of the event's subject (and starts it when it is new).
_BY_SUBJECT = frozenset(
    {
        "encounter.admitted",
        "charge.posted",
        "encounter.discharged",
        "encounter.discharge_cancelled",
        "documentation.completed",
        "coding.completed",
    }
)
_RUNS = "discharge_to_bill.runs"
_READ_AHEAD = "discharge_to_bill.read_ahead"
_RUN_UPDATES = "discharge_to_bill.run_updates"
_NEW_STEPS = "discharge_to_bill.new_steps"
_RUN_FIELDS = [
    f.name for f in WorkflowRun._meta.concrete_fields if not f.primary_key and f.name not in ("workflow",)
]


def _tracked_runs() -> dict[str, WorkflowRun] | None:
    """The runs the current chunk holds, by encounter; None outside a chunk's unit of work."""
    unit = current()
    return unit.identity_map(_RUNS) if unit is not None else None


def _read_ahead(tracked: dict[str, WorkflowRun]) -> None:
    """Lock (or start) the runs of every encounter the chunk's events name, in two statements, not one a message.

    Runs are locked in id order, as one statement takes them; the new ones are inserted with ON CONFLICT, so
    a run another worker started meanwhile is read (and locked) instead.
    """
    unit = current()
    if unit is None or connection.vendor != "postgresql":
        return
    done = unit.identity_map(_READ_AHEAD)
    if done:
        return
    done[True] = True
    keys = sorted(
        {e.subject for e in unit.events if e.type in _BY_SUBJECT and e.subject and e.subject not in tracked}
    )
    if not keys:
        return
    found = _lock_runs(keys)
    now = timezone.now()
    new = [
        WorkflowRun(workflow=WORKFLOW, business_key=key, started_at=now) for key in keys if key not in found
    ]
    taken = []
    for run, inserted in zip(new, _start_runs(new), strict=True):
        if inserted:
            _prime(run, created=True)
            found[run.business_key] = run
        else:
            taken.append(run.business_key)
    if taken:
        found.update(_lock_runs(taken))
    tracked.update(found)


def _start_runs(runs: list[WorkflowRun]) -> list[bool]:
    """Insert new runs, post_save for each; a run another worker started meanwhile is not inserted (False).

    The runs differ only in their key: the values they share are prepared and sent once.
    """
    return insert_many_if_new(runs, key=["workflow", "business_key"], varying=["business_key"])


def _save(run: WorkflowRun) -> None:
    """Save the run; within a chunk, a run the chunk holds is written once, with the others, at its end."""
    unit = current()
    if unit is None or run.pk is None or unit.identity_map(_RUNS).get(run.business_key) is not run:
        run.save()
        return
    unit.pending(_RUN_UPDATES, dict, _write_runs)[run.pk] = run


def _write_runs(runs: dict[int, WorkflowRun]) -> None:
    now = timezone.now()
    for run in runs.values():
        run.updated_at = now
    update_rows(list(runs.values()), _RUN_FIELDS)
    for run in runs.values():
        # As save() would: the KPI rollups mark the run dirty.
        post_save.send(
            sender=WorkflowRun,
            instance=run,
            created=False,
            update_fields=None,
            raw=False,
            using=run._state.db,
        )


# A chunk keeps its new steps as rows of these values, not as WorkflowStep objects: building some sixty model
# objects a chunk, and Django's bulk insert preparing each value again, cost more than the insert itself.
_STEP_COLUMNS = ("run_id", "step", "occurred_at", "recorded_at", "event_id", "delivery_id", "note")


def _step_row(values: tuple[Any, ...]) -> WorkflowStep:
    return WorkflowStep(**dict(zip(_STEP_COLUMNS, values, strict=True)))


def _write_steps(rows: list[tuple[Any, ...]]) -> None:
    """Insert the chunk's new steps in one statement; nothing listens to WorkflowStep's post_save (a test checks)."""
    insert_rows(WorkflowStep, _STEP_COLUMNS, rows)


# A run loaded by _run_for carries the names of its recorded steps (read at first use), saving a query per
# step check; any other run object is asked the database each time.
_STEPS_ATTR = "_discharge_steps"
_LOAD_STEPS = object()


def _known_steps(run: WorkflowRun) -> set[str] | None:
    steps = getattr(run, _STEPS_ATTR, None)
    if steps is _LOAD_STEPS:
        flush()  # steps the chunk has not written yet count too
        steps = set(run.steps.values_list("step", flat=True))
        setattr(run, _STEPS_ATTR, steps)
    return steps


def _forget_steps(run: WorkflowRun) -> None:
    if getattr(run, _STEPS_ATTR, None) is not None:
        setattr(run, _STEPS_ATTR, _LOAD_STEPS)


def _has_step(run: WorkflowRun, step: str) -> bool:
    steps = _known_steps(run)
    if steps is None:
        return run.steps.filter(step=step).exists()
    return step in steps


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
    moment = parse_datetime(str(value)) if value else None
    if moment is not None and timezone.is_naive(moment):
        # A date-only value (an 835 payment date) is taken in the hospital's time zone.
        moment = timezone.make_aware(moment)
    return moment


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
        _save(run)
    steps = _known_steps(run)
    if steps is None:
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
    elif step not in steps:
        # No savepoint: the run's row lock rules out a concurrent insert of the same step.
        values = (
            run.pk,
            step,
            occurred_at or timezone.now(),
            timezone.now(),
            event.pk if event is not None else None,
            delivery.pk if delivery is not None else None,
            note[:300],
        )
        unit = current()
        if unit is not None and unit.identity_map(_RUNS).get(run.business_key) is run:
            # Nothing reads a step back before the chunk ends (the names are known in memory; what reads
            # the table flushes first): the chunk's steps go in one statement.
            unit.pending(_NEW_STEPS, list, _write_steps).append(values)
        else:
            _step_row(values).save(force_insert=True)
        steps.add(step)
    run.step = step


def _raise_missing_data(run: WorkflowRun, missing: list[str], *, event: CanonicalEvent | None) -> None:
    fix_fields = [field for name, fields in REQUIREMENTS if name in missing for field in fields]
    _read_ahead_exceptions(run)
    exception_raise_or_refresh(
        run,
        ExceptionKind.MISSING_DATA,
        missing_reason(run.business_key, missing),
        detail={"missing": missing, "fix_fields": fix_fields},
        event=event,
        facility=run.facility,
        payer=run.payer,
        amount=run.amount,
    )
    _save(run)
    logger.info("run %s blocked: %s missing", run.pk, len(missing))


def _read_ahead_exceptions(run: WorkflowRun) -> None:
    """Before the chunk's first exception, learn which the chunk's runs have open, in one query for them all."""
    tracked = _tracked_runs()
    if tracked is not None and tracked.get(run.business_key) is run:
        exceptions_read_ahead(WORKFLOW, tracked)


def _resolve_missing_data(run: WorkflowRun, note: str) -> None:
    for item in _open_exceptions(run).filter(kind=ExceptionKind.MISSING_DATA):
        item.status = ExceptionStatus.RESOLVED
        item.resolved_at = timezone.now()
        item.resolution_note = note
        item.save(update_fields=["status", "resolved_at", "resolution_note", "updated_at"])
