"""Discharge-to-bill end to end: HL7 in, claim at a real RCM server, accrual at a real ERP server."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.contrib.auth.models import User

from connectors.simulators import hl7_builder
from connectors.simulators.erp import ErpSimulator
from connectors.simulators.rcm import RcmSimulator
from healthsync import services
from healthsync.choices import DeliveryStatus, ExceptionKind, ExceptionStatus, MessageStatus, RunStatus
from healthsync.deliveries import deliver_due
from healthsync.models import CanonicalEvent, Delivery, ExceptionItem, Message
from healthsync.pipeline import process_pending
from tests.pipeline_support import commits, destinations, feed, store, tasks_inline
from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def sims() -> Iterator[tuple[RcmSimulator, ErpSimulator]]:
    with destinations() as pair, tasks_inline():
        yield pair


def _run(encounter: str = "V1001") -> WorkflowRun:
    return WorkflowRun.objects.get(workflow="discharge_to_bill", business_key=encounter)


def test_a_complete_discharge_makes_exactly_one_claim_and_one_accrual(sims: tuple) -> None:
    rcm, erp = sims
    messages = feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())

    assert [m.status for m in messages] == [MessageStatus.PROCESSED] * 3
    run = _run()
    assert run.status == RunStatus.COMPLETED
    assert set(run.steps.values_list("step", flat=True)) == {
        "admitted",
        "charges_posted",
        "discharged",
        "claim_ready",
        "claim_submitted",
        "accrual_posted",
    }
    assert run.step == "accrual_posted"
    assert rcm.claim_count == 1 and erp.entry_count == 1
    claim = next(iter(rcm.claims.values()))
    assert claim["claim"]["total_charges"] == "3250.50"
    assert claim["claim"]["payer"]["id"] == "AETNA01"
    entry = next(iter(erp.entries.values()))["entry"]
    assert entry["lines"][0]["debit"] == entry["lines"][1]["credit"] == "3250.50"
    assert run.context["claim_id"] == claim["claim_id"]
    assert run.context["journal_document_number"] == next(iter(erp.entries))
    assert run.amount == Decimal("3250.50")
    # The discharge step carries the business time from PV1-45, not the processing time.
    discharged = run.steps.get(step="discharged")
    assert discharged.occurred_at.isoformat().startswith("2026-01-03T12:00:00")
    assert not ExceptionItem.objects.exists()


def test_processing_the_same_discharge_again_does_not_bill_twice(sims: tuple) -> None:
    rcm, erp = sims
    a03 = hl7_builder.adt_a03(control_id="CTRL-A03-1")
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), a03)
    # The same message replayed, and the same discharge resent by the EHR under a new control id.
    store(a03)
    feed(hl7_builder.adt_a03())

    assert CanonicalEvent.objects.filter(type="encounter.discharged").count() == 2
    assert rcm.claim_count == 1 and erp.entry_count == 1
    assert rcm.requests["POST /claims"] == 1
    assert Delivery.objects.count() == 2


def test_a_discharge_without_insurance_raises_a_missing_data_exception(sims: tuple) -> None:
    rcm, _ = sims
    feed(
        hl7_builder.adt_a01(include_insurance=False),
        hl7_builder.dft_p03(),
        hl7_builder.adt_a03(include_insurance=False),
    )

    run = _run()
    assert run.status == RunStatus.BLOCKED
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.MISSING_DATA
    assert item.reason == "Discharge of encounter V1001 cannot be billed: insurance is missing"
    assert item.detail["missing"] == ["insurance"]
    assert {f["name"] for f in item.detail["fix_fields"]} >= {"coverage.payer_name", "coverage.payer_id"}
    assert item.amount == Decimal("3250.50")
    assert item.business_key == "V1001"
    assert item.facility == "GENHOSP"
    assert rcm.requests["POST /claims"] == 0


def test_the_reason_names_every_missing_item(sims: tuple) -> None:
    feed(hl7_builder.adt_a03(include_insurance=False, include_diagnosis=False))

    item = ExceptionItem.objects.get()
    assert item.reason == "Discharge of encounter V1001 cannot be billed: insurance and diagnosis are missing"


def test_retry_with_fixes_sends_one_claim_and_one_accrual_even_when_retried_twice(
    sims: tuple, rcm_analyst: User
) -> None:
    rcm, erp = sims
    feed(
        hl7_builder.adt_a01(include_insurance=False),
        hl7_builder.dft_p03(),
        hl7_builder.adt_a03(include_insurance=False),
    )
    item = ExceptionItem.objects.get()
    raw_before = bytes(Message.objects.get(message_type="ADT^A03").raw)

    fixes = {"coverage.payer_name": "Cigna", "coverage.payer_id": "CIGNA01"}
    with commits():
        item = services.exception_retry(exception=item, actor=rcm_analyst, fixes=fixes)
    with commits():
        item = services.exception_retry(exception=item, actor=rcm_analyst, fixes=fixes)
    item.refresh_from_db()

    assert item.status == ExceptionStatus.RESOLVED
    assert rcm.claim_count == 1 and erp.entry_count == 1
    assert next(iter(rcm.claims.values()))["claim"]["payer"] == {
        "id": "CIGNA01",
        "name": "Cigna",
        "plan_id": "",
        "policy_number": "",
        "group_number": "",
    }
    assert _run().status == RunStatus.COMPLETED
    # The source stays as received; the fix lives on the run and who made it is on record.
    assert bytes(Message.objects.get(message_type="ADT^A03").raw) == raw_before
    assert "coverage" not in CanonicalEvent.objects.get(type="encounter.discharged").data
    assert "Insurance payer" in item.comments.first().body
    assert item.comments.first().author == rcm_analyst


def test_a_partial_fix_keeps_the_exception_open_with_what_is_still_missing(
    sims: tuple, rcm_analyst: User
) -> None:
    rcm, _ = sims
    feed(hl7_builder.adt_a03(include_insurance=False, include_diagnosis=False))
    item = ExceptionItem.objects.get()

    with commits():
        item = services.exception_retry(exception=item, actor=rcm_analyst, fixes={"diagnosis.code": "J18.9"})

    assert item.is_open
    assert item.detail["missing"] == ["insurance"]
    assert item.reason.endswith("insurance is missing")
    assert rcm.requests["POST /claims"] == 0


def test_retry_rejects_fields_the_exception_does_not_offer(sims: tuple, rcm_analyst: User) -> None:
    from django.core.exceptions import ValidationError

    feed(hl7_builder.adt_a03(include_insurance=False))
    item = ExceptionItem.objects.get()
    with pytest.raises(ValidationError):
        services.exception_retry(exception=item, actor=rcm_analyst, fixes={"patient.mrn": "X"})


def test_an_rcm_rejection_becomes_a_destination_rejected_exception(sims: tuple) -> None:
    rcm, erp = sims
    rcm.forced_status = 400
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())

    delivery = Delivery.objects.get(operation="submit_claim")
    assert delivery.status == DeliveryStatus.FAILED
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.DESTINATION_REJECTED
    assert "rejected the claim for V1001" in item.reason
    assert "HTTP 400" in item.reason
    assert item.amount == Decimal("3250.50") and item.payer == "Aetna"
    assert _run().status == RunStatus.BLOCKED
    # The revenue is accrued when the claim is ready, whatever the RCM answers; once only.
    assert erp.entry_count == 1


def test_a_rejected_claim_goes_out_once_when_retried(sims: tuple, rcm_analyst: User) -> None:
    rcm, erp = sims
    rcm.forced_status = 400
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())
    item = ExceptionItem.objects.get()
    rcm.forced_status = None

    with commits():
        services.exception_retry(exception=item, actor=rcm_analyst)
    with commits():
        services.exception_retry(exception=item, actor=rcm_analyst)

    item.refresh_from_db()
    assert item.status == ExceptionStatus.RESOLVED
    assert rcm.claim_count == 1 and erp.entry_count == 1
    assert _run().status == RunStatus.COMPLETED


def test_an_rcm_that_is_down_is_retried_then_raises_destination_down(sims: tuple) -> None:
    rcm, _ = sims
    rcm.forced_status = 503
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())

    delivery = Delivery.objects.get(operation="submit_claim")
    assert delivery.status == DeliveryStatus.RETRYING and delivery.attempts == 1
    with commits():
        deliver_due()
        deliver_due()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 3
    assert rcm.requests["POST /claims"] == 3
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.DESTINATION_DOWN
    assert "after 3 attempts" in item.reason
    assert _run().status == RunStatus.BLOCKED


def test_a_message_missing_the_encounter_id_fails_with_its_raw_kept(sims: tuple) -> None:
    raw = hl7_builder.adt_a03(encounter_id="")
    (message,) = feed(raw)

    assert message.status == MessageStatus.FAILED
    assert bytes(message.raw) == raw.encode()
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.MAPPING_FAILED
    assert "encounter_id" in item.reason
    assert item.message == message
    assert not WorkflowRun.objects.exists()


def test_a_message_that_is_not_hl7_fails_with_its_raw_kept(sims: tuple) -> None:
    message = store(b"this is not an HL7 message", message_type="ADT^A03")
    with commits():
        process_pending()
    message.refresh_from_db()

    assert message.status == MessageStatus.FAILED
    assert bytes(message.raw) == b"this is not an HL7 message"
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.MAPPING_FAILED
    assert "could not be read" in item.reason


@pytest.mark.django_db(transaction=True)
def test_end_to_end_with_real_commits(sims: tuple) -> None:
    # Real commits: deliveries go out from on-commit callbacks exactly as in production.
    rcm, erp = sims
    for raw in (hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03()):
        store(raw)
    process_pending()
    process_pending()

    assert _run().status == RunStatus.COMPLETED
    assert rcm.claim_count == 1 and erp.entry_count == 1
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SUCCEEDED}


def test_a_fixed_account_the_rcm_then_rejects_hands_over_to_the_delivery_exception(
    sims: tuple, rcm_analyst: User
) -> None:
    rcm, erp = sims
    feed(
        hl7_builder.adt_a01(include_insurance=False),
        hl7_builder.dft_p03(),
        hl7_builder.adt_a03(include_insurance=False),
    )
    missing = ExceptionItem.objects.get()
    rcm.forced_status = 400

    with commits():
        services.exception_retry(
            exception=missing,
            actor=rcm_analyst,
            fixes={"coverage.payer_name": "Cigna", "coverage.payer_id": "C1"},
        )

    missing.refresh_from_db()
    assert missing.status == ExceptionStatus.RESOLVED
    rejected = ExceptionItem.objects.open().get()
    assert rejected.kind == ExceptionKind.DESTINATION_REJECTED
    assert rejected.payer == "Cigna"

    rcm.forced_status = None
    with commits():
        services.exception_retry(exception=rejected, actor=rcm_analyst)
    assert rcm.claim_count == 1 and erp.entry_count == 1
    assert not ExceptionItem.objects.open().exists()
    assert _run().status == RunStatus.COMPLETED
