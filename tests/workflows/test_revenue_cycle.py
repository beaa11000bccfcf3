"""Discharge-to-bill-to-cash beyond the claim: cancel-discharge, coding, bill hold, late charges, remittance."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import override_settings

from connectors.simulators import hl7_builder
from healthsync import services
from healthsync.choices import ExceptionKind, ExceptionStatus, MessageStatus, RunStatus
from healthsync.models import Delivery, ExceptionItem
from tests.pipeline_support import commits, feed
from tests.workflows.support import emit, workflow_destinations
from workflows import discharge_to_bill
from workflows.models import ReimbursementRate, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def sims() -> Iterator[tuple]:
    with workflow_destinations() as pair:
        yield pair


def _run(key: str = "V1001", workflow: str = "discharge_to_bill") -> WorkflowRun:
    return WorkflowRun.objects.get(workflow=workflow, business_key=key)


def _steps(run: WorkflowRun) -> set[str]:
    return set(run.steps.values_list("step", flat=True))


def _billed(sims: tuple) -> WorkflowRun:
    ReimbursementRate.objects.get_or_create(payer_id="*", defaults={"percent": Decimal("80")})
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())
    return _run()


def test_cancel_discharge_puts_a_blocked_account_back_and_withdraws_its_exception(sims: tuple) -> None:
    rcm, _ = sims
    feed(hl7_builder.adt_a01(include_insurance=False), hl7_builder.adt_a03(include_insurance=False))
    assert ExceptionItem.objects.open().count() == 1

    (a13,) = feed(hl7_builder.adt_a13())

    assert a13.status == MessageStatus.PROCESSED
    run = _run()
    assert run.step == "admitted" and run.status == RunStatus.ACTIVE
    assert "discharged" not in _steps(run) and "discharge_cancelled" in _steps(run)
    assert "discharged_at" not in run.context
    item = ExceptionItem.objects.get()
    assert item.status == ExceptionStatus.RESOLVED
    assert "discharge was cancelled" in item.resolution_note
    assert rcm.claim_count == 0


def test_a_discharge_after_a_cancel_bills_once(sims: tuple) -> None:
    rcm, erp = sims
    feed(hl7_builder.adt_a01(include_insurance=False), hl7_builder.adt_a03(include_insurance=False))
    feed(hl7_builder.adt_a13(), hl7_builder.dft_p03(), hl7_builder.adt_a03())

    run = _run()
    assert run.status == RunStatus.COMPLETED
    assert rcm.claim_count == 1 and erp.entry_count == 1


def test_cancel_discharge_after_the_claim_went_out_voids_it_reverses_the_accrual_and_rebills(
    sims: tuple,
) -> None:
    rcm, erp = sims
    billed = _billed(sims)
    original_id = billed.context["claim_id"]
    assert billed.status == RunStatus.COMPLETED and billed.context["forecast"]["basis"] == "default rate"

    feed(hl7_builder.adt_a13())
    feed(hl7_builder.adt_a13(control_id="A13-again"))  # the EHR resends the cancel

    # One void (frequency 8) at the RCM; the original claim is voided there.
    voids = [c for c in rcm.claims.values() if c["claim"]["claim_frequency"] == "8"]
    assert len(voids) == 1 and voids[0]["claim"]["original_claim_id"] == original_id
    assert rcm.claims[original_id]["status"] == "voided"
    # The accrual is reversed once, for the full accrued amount, sides swapped.
    journals = [e["entry"] for e in erp.entries.values()]
    reversals = [j for j in journals if ":accrual-reversal:" in j["external_reference"]]
    assert len(reversals) == 1
    lines = {line["account"]: line for line in reversals[0]["lines"]}
    assert lines["4000"]["debit"] == lines["1200"]["credit"] == "3250.50"
    # The forecast is withdrawn too.
    kinds = sorted(f["forecast"]["kind"] for f in erp.forecasts.values())
    assert kinds == ["forecast", "reversal"]
    assert _forecasts(erp, "reversal")[0]["amount"] == "-2600.40"
    run = _run()
    assert run.status == RunStatus.ACTIVE and run.step == "admitted"
    assert {"discharge_cancelled", "claim_voided", "accrual_reversed"} <= _steps(run)
    assert not {"discharged", "claim_submitted", "accrual_posted"} & _steps(run)
    assert "claim_id" not in run.context and run.context["voided_claims"][0]["claim_id"] == original_id
    assert ExceptionItem.objects.open().count() == 0

    # A new discharge sends a replacement claim (next version) and accrues again.
    feed(hl7_builder.adt_a03(control_id="A03-2"))

    run = _run()
    assert run.status == RunStatus.COMPLETED
    assert run.context["claim_id"] not in (original_id, voids[0]["claim_id"])
    assert run.context["claim_version"] == 2
    originals = [c for c in rcm.claims.values() if c["claim"]["claim_frequency"] == "1"]
    assert len(originals) == 2 and rcm.claims[run.context["claim_id"]]["status"] == "accepted"
    accruals = [j for j in erp.entries.values() if ":accrual:" in j["entry"]["external_reference"]]
    assert len(accruals) == 2
    assert rcm.claim_count == 3 and erp.entry_count == 3


def test_cancel_discharge_while_the_claim_waits_to_retry_withdraws_it_and_it_is_never_sent(
    sims: tuple,
) -> None:
    from healthsync.choices import DeliveryStatus
    from healthsync.deliveries import deliver_due

    rcm, erp = sims
    ReimbursementRate.objects.get_or_create(payer_id="*", defaults={"percent": Decimal("80")})
    rcm.forced_status = 503  # the RCM is down: the claim waits to retry, the ERP took the accrual
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())
    claim = Delivery.objects.get(operation="submit_claim")
    assert claim.status == DeliveryStatus.RETRYING and erp.entry_count == 1

    feed(hl7_builder.adt_a13())
    rcm.forced_status = None
    with commits():
        deliver_due()

    claim.refresh_from_db()
    assert claim.status == DeliveryStatus.FAILED and claim.last_error == discharge_to_bill.WITHDRAWN
    assert rcm.requests["POST /claims"] == 1 and rcm.claim_count == 0  # never reached the payer
    reversals = [
        e["entry"] for e in erp.entries.values() if ":accrual-reversal:" in e["entry"]["external_reference"]
    ]
    assert len(reversals) == 1  # the accrual had been posted: it is reversed, once
    assert sorted(f["forecast"]["kind"] for f in erp.forecasts.values()) == ["forecast", "reversal"]
    run = _run()
    assert run.status == RunStatus.ACTIVE and "claim_withdrawn" in _steps(run)
    assert "claim_delivery_id" not in run.context
    assert ExceptionItem.objects.open().count() == 0

    feed(hl7_builder.adt_a03(control_id="A03-2"))

    run = _run()
    assert run.status == RunStatus.COMPLETED and run.context["claim_version"] == 2
    assert rcm.claim_count == 1


def test_a_void_the_rcm_refuses_blocks_the_run_with_an_exception(sims: tuple) -> None:
    rcm, _ = sims
    billed = _billed(sims)
    rcm.claims[billed.context["claim_id"]]["status"] = "voided"  # voided in the RCM by hand meanwhile

    feed(hl7_builder.adt_a13())

    item = ExceptionItem.objects.open().get()
    assert item.kind == ExceptionKind.DESTINATION_REJECTED
    assert "already voided" in item.reason
    assert _run().status == RunStatus.BLOCKED


@override_settings(HEALTHSYNC_REQUIRE_CODING=True)
def test_with_coding_required_the_claim_waits_for_bar_p05_and_carries_its_codes(sims: tuple) -> None:
    rcm, _ = sims
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03(), hl7_builder.mdm_t02())
    assert rcm.claim_count == 0
    assert "documentation_completed" in _steps(_run())

    feed(hl7_builder.bar_p05(diagnoses=[("K35.80", "Acute appendicitis", "F")]))

    run = _run()
    assert {"coding_completed", "claim_ready", "claim_submitted"} <= _steps(run)
    claim = next(iter(rcm.claims.values()))["claim"]
    assert claim["diagnoses"][0]["code"] == "K35.80"
    assert run.context["drg"] == "343"
    assert run.context["procedures"][0]["code"] == "0DTJ4ZZ"


def test_a_coding_message_without_diagnoses_fails_with_the_field_named(sims: tuple) -> None:
    (message,) = feed(hl7_builder.bar_p05(include_diagnosis=False))

    assert message.status == MessageStatus.FAILED
    item = ExceptionItem.objects.get(message=message)
    assert "diagnoses" in item.reason
    assert bytes(message.raw).startswith(b"MSH")


@override_settings(HEALTHSYNC_BILL_HOLD_DAYS=3)
def test_the_bill_hold_keeps_the_claim_until_it_ends(sims: tuple) -> None:
    rcm, _ = sims
    # Discharged now: the three-day hold has not ended.
    from django.utils import timezone

    now = timezone.now().strftime("%Y%m%d%H%M%S")
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03(discharge_time=now))
    assert rcm.claim_count == 0
    assert _run().context["bill_hold_until"]

    with commits():
        discharge_to_bill.release_bill_holds(timezone.now() + timedelta(days=1))
    assert rcm.claim_count == 0

    with commits():
        discharge_to_bill.release_bill_holds(timezone.now() + timedelta(days=4))
    assert rcm.claim_count == 1
    assert "bill_hold_released" in _steps(_run())


@override_settings(HEALTHSYNC_BILL_HOLD_DAYS=3)
def test_an_old_discharge_passes_the_bill_hold_straight_away(sims: tuple) -> None:
    rcm, _ = sims
    _billed(sims)  # discharged 2026-01-03, long past the hold

    run = _run()
    assert "bill_hold_released" in _steps(run)
    assert rcm.claim_count == 1


def test_a_late_charge_goes_on_one_corrected_claim_with_a_new_version(sims: tuple) -> None:
    rcm, erp = sims
    _billed(sims)
    late = [
        {
            "charge_id": "CHG2001",
            "code": "250001",
            "description": "Pharmacy",
            "amount": "100.00",
            "quantity": "1",
        }
    ]

    feed(hl7_builder.dft_p03(charges=late))
    feed(hl7_builder.dft_p03(charges=late))  # the same late charge resent

    run = _run()
    assert run.context["late_charges"] == ["CHG2001"]
    assert {"late_charge_posted", "corrected_claim_submitted"} <= _steps(run)
    assert rcm.claim_count == 2
    corrected = [c for c in rcm.claims.values() if c["claim"]["claim_frequency"] == "7"]
    assert len(corrected) == 1
    assert corrected[0]["claim"]["original_claim_id"] == run.context["claim_id"]
    assert corrected[0]["claim"]["total_charges"] == "3350.50"
    assert corrected[0]["idempotency_key"].endswith(":claim:V1001:2")
    # The original accrual and one adjustment for the late amount.
    assert erp.entry_count == 2
    adjustment = next(
        e["entry"] for e in erp.entries.values() if e["entry"]["external_reference"].endswith(":2")
    )
    assert adjustment["lines"][0]["debit"] == "100.00"


def test_claim_lifecycle_events_record_their_steps(sims: tuple) -> None:
    run = _billed(sims)
    claim_id = run.context["claim_id"]
    emit("claim.accepted", claim_id, {"claim_id": claim_id, "patient_control_number": "V1001"}, ref="277-1")

    assert "claim_accepted" in _steps(_run())


def test_a_payment_posts_cash_and_adjustments_once_even_when_the_remit_repeats(sims: tuple) -> None:
    _, erp = sims
    run = _billed(sims)
    paid = {
        "claim_id": run.context["claim_id"],
        "patient_control_number": "V1001",
        "paid_amount": "2000.00",
        "patient_responsibility": "250.00",
        "adjustments": [{"group": "CO", "reason": "45", "amount": "1000.50"}],
        "trace_number": "TRN-1",
        "payment_date": "2026-02-01",
    }
    emit("claim.paid", run.context["claim_id"], paid, ref="835-1")
    emit("claim.paid", run.context["claim_id"], paid, ref="835-1-again")  # a duplicate remit file

    cash = [e["entry"] for e in erp.entries.values() if ":cash:" in e["entry"]["external_reference"]]
    assert len(cash) == 1
    lines = {line["account"]: line for line in cash[0]["lines"]}
    assert lines["1000"]["debit"] == "2000.00"
    assert lines["4900"]["debit"] == "1000.50"
    assert lines["1210"]["debit"] == "250.00"
    assert lines["1200"]["credit"] == "3250.50"
    assert {"paid", "cash_posted"} <= _steps(_run())


def test_a_remittance_carrying_its_claims_posts_them_and_completes(sims: tuple) -> None:
    _, erp = sims
    run = _billed(sims)
    remit = {
        "trace_number": "TRN-9",
        "amount": "2000.00",
        "payer": "Aetna",
        "payment_date": "2026-02-01",
        "claim_count": 1,
        "claims": [
            {"claim_id": run.context["claim_id"], "patient_control_number": "V1001", "paid_amount": "2000.00"}
        ],
    }
    emit("remittance.received", "TRN-9", remit, ref="TRN-9")
    emit("remittance.received", "TRN-9", remit, ref="TRN-9-resent")

    remittance = _run("TRN-9", "remittance")
    assert remittance.status == RunStatus.COMPLETED
    assert Delivery.objects.filter(idempotency_key__contains=":cash:").count() == 1
    assert erp.entry_count == 2  # accrual + cash


def test_a_denial_becomes_an_exception_with_the_amount_at_stake(sims: tuple) -> None:
    run = _billed(sims)
    emit(
        "claim.denied",
        run.context["claim_id"],
        {"claim_id": run.context["claim_id"], "adjustments": [{"group": "CO", "reason": "16"}]},
        ref="835-d",
    )

    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.DESTINATION_REJECTED
    assert "denied" in item.reason and "CO-16" in item.reason
    assert item.amount == Decimal("3250.50")
    assert "denied" in _steps(_run())
    # The payer pays nothing: the expected reimbursement (80 %) is trued up to zero, once.
    _, erp = sims
    emit("claim.denied", run.context["claim_id"], {"claim_id": run.context["claim_id"]}, ref="835-d2")
    assert [f["amount"] for f in _forecasts(erp, "true_up")] == ["-2600.40"]


def test_a_rejection_blocks_the_run(sims: tuple) -> None:
    run = _billed(sims)
    emit("claim.rejected", "x", {"patient_control_number": "V1001", "reasons": ["A7:562"]}, ref="277-r")

    assert _run().status == RunStatus.BLOCKED
    assert "A7:562" in ExceptionItem.objects.get().reason
    assert "claim_rejected" in _steps(run)


def test_a_payment_for_an_unknown_claim_is_a_mismatch(sims: tuple) -> None:
    emit("claim.paid", "CLM-X", {"claim_id": "CLM-X", "paid_amount": "10.00"}, ref="835-x")

    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.MISMATCH
    assert "CLM-X" in item.reason
    assert item.amount == Decimal("10.00")


def test_resolving_a_blocking_exception_lets_the_run_move_on(sims: tuple, rcm_analyst: User) -> None:
    rcm, _ = sims
    feed(hl7_builder.adt_a01(include_insurance=False), hl7_builder.adt_a03(include_insurance=False))
    run = _run()
    run.context["coverage"] = {"payer_id": "CIGNA01", "payer_name": "Cigna"}
    run.save()

    with commits():
        services.exception_resolve(
            exception=ExceptionItem.objects.get(), note="Insurance added in the EHR.", actor=rcm_analyst
        )

    assert rcm.claim_count == 1
    assert "claim_submitted" in _steps(_run())


def _forecasts(erp: object, kind: str) -> list[dict]:
    return [f["forecast"] for f in erp.forecasts.values() if f["forecast"]["kind"] == kind]  # type: ignore[attr-defined]


def test_claim_ready_posts_the_expected_reimbursement_once_at_the_default_rate(sims: tuple) -> None:
    _, erp = sims
    ReimbursementRate.objects.create(payer_id="*", percent=Decimal("70"))
    run = _billed(sims)
    discharge_to_bill.advance(_run())  # asked again: nothing new

    (forecast,) = _forecasts(erp, "forecast")
    assert forecast["billed"] == "3250.50" and forecast["percent"] == "70.00"
    assert forecast["amount"] == "2275.35" and forecast["basis"] == "default rate"
    assert forecast["encounter"] == run.business_key and forecast["payer_id"]
    assert "forecast_posted" in _steps(_run())


def test_a_payer_contract_rate_sets_the_forecast_and_the_remittance_trues_it_up_once(sims: tuple) -> None:
    _, erp = sims
    feed(hl7_builder.adt_a01())
    payer_id = _run().context["coverage"]["payer_id"]
    ReimbursementRate.objects.create(payer_id=payer_id, percent=Decimal("60.00"))
    run = _billed(sims)
    (forecast,) = _forecasts(erp, "forecast")
    assert forecast["amount"] == "1950.30" and forecast["basis"] == f"contract rate {payer_id}"

    paid = {
        "claim_id": run.context["claim_id"],
        "patient_control_number": "V1001",
        "paid_amount": "2000.00",
        "patient_responsibility": "250.00",
        "trace_number": "TRN-1",
        "payment_date": "2026-02-01",
    }
    emit("claim.paid", run.context["claim_id"], paid, ref="835-1")
    emit("claim.paid", run.context["claim_id"], paid, ref="835-1-again")

    (true_up,) = _forecasts(erp, "true_up")
    assert true_up["amount"] == "299.70"  # paid 2250.00 against 1950.30 expected
    assert true_up["forecast_reference"] == forecast["external_reference"]
    assert "forecast_trued_up" in _steps(_run())
    assert _run().context["forecast"]["difference"] == "299.70"


def test_an_appeal_paid_after_a_denial_trues_the_forecast_up_again_once(sims: tuple) -> None:
    _, erp = sims
    ReimbursementRate.objects.create(payer_id="*", percent=Decimal("80"))
    run = _billed(sims)
    claim_id = run.context["claim_id"]
    emit("claim.denied", claim_id, {"claim_id": claim_id, "trace_number": "TRN-D"}, ref="835-d")
    assert [f["amount"] for f in _forecasts(erp, "true_up")] == ["-2600.40"]

    # The appeal is won: a later 835 pays the claim. The forecast moves by what this remittance changes.
    paid = {
        "claim_id": claim_id,
        "patient_control_number": "V1001",
        "paid_amount": "2400.00",
        "patient_responsibility": "200.00",
        "trace_number": "TRN-A",
        "payment_date": "2026-03-01",
    }
    emit("claim.paid", claim_id, paid, ref="835-a")
    emit("claim.paid", claim_id, paid, ref="835-a-resent")

    assert sorted(f["amount"] for f in _forecasts(erp, "true_up")) == ["-2600.40", "2600.00"]
    forecast = _run().context["forecast"]
    assert forecast["actual"] == "2600.00" and forecast["difference"] == "-0.40"
