"""Deliveries: requested once per key, sent with retries and backoff, outcomes recorded and reported."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from connectors.simulators.erp import ErpSimulator
from connectors.simulators.rcm import RcmSimulator
from healthsync.choices import DeliveryStatus, ExceptionKind, ExceptionStatus
from healthsync.deliveries import (
    backoff,
    connector_for_operation,
    deliver,
    deliver_due,
    delivery_request,
    delivery_reset,
)
from healthsync.models import Connector, Delivery, ExceptionItem
from healthsync.registry import workflow_registry
from tests.pipeline_support import commits, destinations

pytestmark = pytest.mark.django_db

CLAIM = {
    "patient_control_number": "V1",
    "payer": {"id": "P1"},
    "diagnoses": [{"code": "I10"}],
    "total_charges": "10.00",
}


@pytest.fixture
def sims() -> Iterator[tuple[RcmSimulator, ErpSimulator]]:
    with destinations() as pair:
        yield pair


@pytest.fixture
def outcomes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    monkeypatch.setitem(workflow_registry.delivery_handlers, "test", lambda d: seen.append((d.pk, d.status)))
    return seen


def _claim(key: str = "ehr-main:claim:V1:1", payload: dict | None = None) -> Delivery:
    return delivery_request(
        connector=connector_for_operation("submit_claim"),
        operation="submit_claim",
        payload=payload or CLAIM,
        idempotency_key=key,
        workflow="test",
        business_key="V1",
    )


def test_asking_twice_for_the_same_key_returns_the_first_delivery(
    sims: tuple, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        first = _claim()
        second = _claim(payload={"other": True})
    assert first.pk == second.pk
    assert Delivery.objects.count() == 1
    assert len(callbacks) == 1


def test_a_delivery_is_sent_after_commit_and_its_reply_stored(sims: tuple, outcomes: list) -> None:
    rcm, _ = sims
    with commits():
        delivery = _claim()
        assert rcm.requests["POST /claims"] == 0  # nothing leaves before the commit
    # on-commit enqueues a django-q2 task; the worker would run it: run it here.
    assert deliver(delivery.pk) == DeliveryStatus.SUCCEEDED
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.external_id == "CLM-000001"
    assert delivery.response == {"claim_id": "CLM-000001", "status": "accepted"}
    assert delivery.attempts == 1 and delivery.succeeded_at is not None
    assert outcomes == [(delivery.pk, DeliveryStatus.SUCCEEDED)]


def test_a_succeeded_delivery_is_never_sent_again(sims: tuple) -> None:
    rcm, _ = sims
    delivery = _claim()
    deliver(delivery.pk)
    deliver(delivery.pk)
    delivery_reset(delivery=delivery)
    deliver(delivery.pk)
    assert rcm.requests["POST /claims"] == 1


def test_the_idempotency_key_travels_so_a_resend_has_no_second_effect(sims: tuple) -> None:
    rcm, _ = sims
    delivery = _claim()
    deliver(delivery.pk)
    # As if the reply had been lost: the delivery is sent again with the same key.
    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.PENDING)
    deliver(delivery.pk)
    delivery.refresh_from_db()
    assert rcm.requests["POST /claims"] == 2
    assert rcm.claim_count == 1
    assert delivery.external_id == "CLM-000001"


def test_a_rejection_fails_the_delivery_with_an_exception_and_reports_it(sims: tuple, outcomes: list) -> None:
    delivery = _claim(payload={"patient_control_number": "V1"})
    assert deliver(delivery.pk) == DeliveryStatus.FAILED
    delivery.refresh_from_db()
    assert "payer.id" in delivery.last_error
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.DESTINATION_REJECTED
    assert item.delivery == delivery and item.workflow == "test" and item.business_key == "V1"
    assert "Revenue cycle (RCM) rejected the claim for V1: HTTP 400" in item.reason
    assert item.detail["response"]["errors"] == ["payer.id", "diagnoses", "total_charges"]
    assert outcomes == [(delivery.pk, DeliveryStatus.FAILED)]


def test_a_transient_failure_waits_with_backoff_then_gives_up(sims: tuple, outcomes: list) -> None:
    rcm, _ = sims
    Connector.objects.filter(code="rcm-claims").update(retry_backoff_seconds=60)
    rcm.forced_status = 503
    delivery = _claim()

    assert deliver(delivery.pk) == DeliveryStatus.RETRYING
    delivery.refresh_from_db()
    assert delivery.attempts == 1
    assert delivery.next_attempt_at > timezone.now() + timedelta(seconds=25)
    # Not due yet: neither a direct deliver nor the schedule sends it.
    assert deliver(delivery.pk) == DeliveryStatus.RETRYING
    assert deliver_due() == 0
    assert rcm.requests["POST /claims"] == 1

    for _ in range(2):
        Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        deliver_due()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 3
    assert ExceptionItem.objects.get().kind == ExceptionKind.DESTINATION_DOWN
    assert outcomes == [(delivery.pk, DeliveryStatus.FAILED)]
    assert Connector.objects.get(code="rcm-claims").consecutive_failures == 3


def test_an_unreachable_destination_is_a_transient_failure(sims: tuple) -> None:
    rcm, _ = sims
    rcm.stop()
    delivery = _claim()
    assert deliver(delivery.pk) == DeliveryStatus.RETRYING
    delivery.refresh_from_db()
    assert "unreachable" in delivery.last_error


def test_a_reset_delivery_goes_out_again_and_closes_its_exception(sims: tuple) -> None:
    rcm, _ = sims
    rcm.forced_status = 422
    delivery = _claim()
    deliver(delivery.pk)
    rcm.forced_status = None

    with commits():
        delivery_reset(delivery=delivery)
    deliver(delivery.pk)

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    item = ExceptionItem.objects.get()
    assert item.status == ExceptionStatus.RESOLVED
    assert "CLM-000001" in item.resolution_note


def test_a_delivery_left_sending_by_a_dead_worker_is_picked_up_again(sims: tuple) -> None:
    rcm, _ = sims
    delivery = _claim()
    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.SENDING, sent_at=timezone.now() - timedelta(hours=1)
    )
    assert deliver_due() == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert rcm.claim_count == 1


def test_the_erp_duplicate_answer_counts_as_already_posted(sims: tuple) -> None:
    _, erp = sims
    entry = {
        "external_reference": "ehr-main:accrual:V1:1",
        "lines": [{"account": "1200", "debit": "5.00"}, {"account": "4000", "credit": "5.00"}],
    }
    first = delivery_request(
        connector=connector_for_operation("post_accrual"),
        operation="post_accrual",
        payload=entry,
        idempotency_key="k1",
        workflow="",
        business_key="V1",
    )
    deliver(first.pk)
    # A different key with the same external reference: the ERP refuses to post twice and names its document.
    second = delivery_request(
        connector=first.connector,
        operation="post_accrual",
        payload=entry,
        idempotency_key="k2",
        workflow="",
        business_key="V1",
    )
    assert deliver(second.pk) == DeliveryStatus.SUCCEEDED
    second.refresh_from_db()
    first.refresh_from_db()
    assert second.external_id == first.external_id
    assert erp.entry_count == 1


def test_connector_for_operation_finds_only_enabled_outbound_connectors(sims: tuple) -> None:
    assert connector_for_operation("submit_claim").code == "rcm-claims"
    assert connector_for_operation("post_accrual").code == "erp-journals"
    Connector.objects.filter(code="rcm-claims").update(is_enabled=False)
    with pytest.raises(Connector.DoesNotExist):
        connector_for_operation("submit_claim")
    with pytest.raises(Connector.DoesNotExist):
        connector_for_operation("launch_rocket")


def test_backoff_grows_exponentially_with_jitter() -> None:
    for attempts, ceiling in ((1, 2), (2, 4), (3, 8), (5, 32)):
        delay = backoff(2, attempts).total_seconds()
        assert ceiling / 2 <= delay <= ceiling
    assert backoff(0, 4).total_seconds() == 0


def test_a_bug_in_the_workflow_handler_does_not_undo_the_recorded_delivery(
    sims: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(delivery: Delivery) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(workflow_registry.delivery_handlers, "test", broken)
    delivery = _claim()
    assert deliver(delivery.pk) == DeliveryStatus.SUCCEEDED
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert "RuntimeError: boom" in delivery.last_error


def test_repeated_failures_open_the_breaker_and_deliveries_wait_without_spending_attempts(
    sims: tuple,
) -> None:
    rcm, _ = sims
    Connector.objects.filter(code="rcm-claims").update(breaker_threshold=2, retry_max_attempts=10)
    rcm.forced_status = 503
    first, second = _claim("k-1"), _claim("k-2")
    deliver(first.pk)
    deliver(second.pk)
    assert Connector.objects.get(code="rcm-claims").breaker_open_until > timezone.now()

    third = _claim("k-3")
    assert deliver(third.pk) == DeliveryStatus.RETRYING
    third.refresh_from_db()
    assert third.attempts == 0
    assert rcm.requests["POST /claims"] == 2

    # Once the pause is over a success closes the breaker again.
    rcm.forced_status = None
    Connector.objects.filter(code="rcm-claims").update(
        breaker_open_until=timezone.now() - timedelta(seconds=1)
    )
    Delivery.objects.update(next_attempt_at=timezone.now())
    assert deliver_due() == 3
    connector = Connector.objects.get(code="rcm-claims")
    assert connector.consecutive_failures == 0 and connector.breaker_open_until is None
    assert rcm.claim_count == 3
