"""Deliveries asked for in one transaction go out in one django-q2 task; connectors are read once per batch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import transaction
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from connectors.simulators.erp import ErpSimulator
from connectors.simulators.rcm import RcmSimulator
from healthsync import tasks
from healthsync.choices import DeliveryStatus
from healthsync.deliveries import connector_for_operation, connectors_snapshot, delivery_request
from healthsync.models import Connector, Delivery
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
    # Only what this test enqueues counts: a task another test's background thread committed late is not ours.
    OrmQ.objects.all().delete()
    with destinations() as pair:
        yield pair


def _claim(key: str) -> Delivery:
    return delivery_request(
        connector=connector_for_operation("submit_claim"),
        operation="submit_claim",
        payload=CLAIM,
        idempotency_key=key,
        workflow="test",
        business_key=key,
    )


def _queued() -> list[tuple[str, tuple]]:
    tasks_ = [SignedPackage.loads(row.payload) for row in OrmQ.objects.order_by("id")]
    return [(task["func"], tuple(task["args"])) for task in tasks_]


def test_it_enqueues_a_transactions_deliveries_as_one_task(sims: tuple) -> None:
    with commits():
        first, second = _claim("k:1"), _claim("k:2")

    assert _queued() == [("healthsync.tasks.deliver_many", ([first.pk, second.pk],))]


def test_a_lone_delivery_still_goes_out_as_a_deliver_task(sims: tuple) -> None:
    with commits():
        only = _claim("k:only")

    assert _queued() == [("healthsync.tasks.deliver", (only.pk,))]


def test_it_sends_nothing_for_a_delivery_whose_savepoint_rolled_back(sims: tuple) -> None:
    rcm, _ = sims
    with commits():
        kept = _claim("k:kept")
        with pytest.raises(RuntimeError), transaction.atomic():
            _claim("k:dropped")
            raise RuntimeError("roll the savepoint back")

    assert not Delivery.objects.filter(idempotency_key="k:dropped").exists()
    [(func, (ids,))] = _queued()
    assert func == "healthsync.tasks.deliver_many" and ids[0] == kept.pk
    # The rolled-back delivery's id may ride along; sending treats a missing delivery as nothing to do.
    statuses = tasks.deliver_many(ids)
    assert statuses[kept.pk] == DeliveryStatus.SUCCEEDED
    assert all(status == "" for pk, status in statuses.items() if pk != kept.pk)
    assert rcm.claim_count == 1


def test_deliver_many_sends_each_delivery_and_reports_its_status(sims: tuple) -> None:
    first, second = _claim("k:a"), _claim("k:b")

    assert tasks.deliver_many([first.pk, second.pk, 999999]) == {
        first.pk: DeliveryStatus.SUCCEEDED,
        second.pk: DeliveryStatus.SUCCEEDED,
        999999: "",
    }


def test_a_snapshot_reads_the_connectors_once_for_its_block(sims: tuple) -> None:
    with connectors_snapshot():
        Connector.objects.filter(code="rcm-claims").update(is_enabled=False)
        # Within the batch the configuration it started with holds, like the mapping versions.
        assert connector_for_operation("submit_claim").code == "rcm-claims"
    with pytest.raises(Connector.DoesNotExist):
        connector_for_operation("submit_claim")
