from __future__ import annotations

import inspect
from typing import Any

import pytest

from healthsync import deliveries
from healthsync.choices import ChangeKind, DeliveryStatus, ExceptionKind, ExceptionStatus
from healthsync.governance.ownership import check_delivery, delivery_block, ownership_check
from healthsync.models import Connector, DataOwnership, Delivery, ExceptionItem, System
from tests.governance.support import approve_and_deploy, current, mapping_with, propose
from tests.pipeline_support import destinations

A03 = "ehr-adt-a03-discharged"
pytestmark = pytest.mark.usefixtures("reference")


def test_the_system_of_record_may_write_its_domain():
    assert ownership_check(system="ehr-main", domain="encounter", field="discharged_at")
    assert ownership_check(system=System.objects.get(code="rcm-main"), domain="claim", field="amount")


def test_another_system_may_not_write_an_owned_domain():
    assert not ownership_check(system="erp-main", domain="claim", field="amount")


def test_unowned_domains_are_open():
    assert ownership_check(system="erp-main", domain="inventory", field="sku")


def test_a_field_level_owner_wins_over_the_domain_owner():
    DataOwnership.objects.create(
        domain="encounter", field="financial_class", system=System.objects.get(code="rcm-main")
    )
    assert ownership_check(system="rcm-main", domain="encounter", field="financial_class")
    assert not ownership_check(system="ehr-main", domain="encounter", field="financial_class")
    assert not ownership_check(system="rcm-main", domain="encounter", field="discharged_at")


def test_an_approved_exception_allows_the_write(engineer, board_member):
    exception = {"system": "erp-main", "domain": "claim", "field": "", "reason": "ERP posts claim accruals"}
    approve_and_deploy(propose(ChangeKind.OWNERSHIP_EXCEPTION, exception, engineer), board_member)
    assert ownership_check(system="erp-main", domain="claim", field="amount")


def test_a_pending_exception_does_not(engineer):
    exception = {"system": "erp-main", "domain": "claim", "field": "", "reason": "not yet approved"}
    propose(ChangeKind.OWNERSHIP_EXCEPTION, exception, engineer)
    assert not ownership_check(system="erp-main", domain="claim", field="amount")


def test_review_flags_a_mapping_writing_a_field_its_source_does_not_own(engineer):
    state = mapping_with(A03)
    state["rules"].append(
        {
            "target": "claim.status",
            "source": "PV1-41.1",
            "transform": "",
            "argument": {},
            "required": False,
            "description": "",
        }
    )
    cr = propose(ChangeKind.MAPPING, state, engineer)
    assert cr.findings == [
        "Rule claim.status makes ehr-main the source of claim.status, which rcm-main owns."
    ]
    assert "claim" in cr.domains


def test_review_flags_a_connector_writing_into_a_system_that_does_not_own_it(engineer):
    connector = current(ChangeKind.CONNECTOR, "erp-journals")
    connector["config"]["operations"]["submit_claim"] = {
        "method": "POST",
        "path": "/claims",
        "result_field": "claim_id",
    }
    cr = propose(ChangeKind.CONNECTOR, connector, engineer)
    assert cr.findings == ["Operation submit_claim writes claim into erp-main, but rcm-main owns it."]


def test_the_ownership_entries_are_themselves_governed(engineer, board_member):
    entry = current(ChangeKind.OWNERSHIP, "coverage")
    entry["system"] = "rcm-main"
    entry["steward"] = board_member.username
    approve_and_deploy(propose(ChangeKind.OWNERSHIP, entry, engineer), board_member)
    owner = DataOwnership.objects.get(domain="coverage", field="")
    assert (owner.system.code, owner.steward) == ("rcm-main", board_member)


def test_it_rejects_an_unknown_steward(engineer):
    from healthsync.governance.kinds import ProposalInvalid

    entry = current(ChangeKind.OWNERSHIP, "coverage")
    entry["steward"] = "ghost"
    with pytest.raises(ProposalInvalid, match="steward 'ghost' is not a user"):
        propose(ChangeKind.OWNERSHIP, entry, engineer)


def _rcm_operation(name: str, writes: list[str] | None) -> Connector:
    connector = Connector.objects.select_related("system").get(code="rcm-claims")
    spec: dict[str, Any] = {"method": "POST", "path": "/claims", "result_field": "claim_id"}
    if writes is not None:
        spec["writes"] = writes
    connector.config = {**connector.config, "operations": {**connector.config["operations"], name: spec}}
    connector.save()
    return connector


def _delivery(connector: Connector, operation: str, payload: dict[str, Any]) -> Delivery:
    return Delivery.objects.create(
        connector=connector,
        operation=operation,
        idempotency_key=f"test:{operation}:1",
        payload=payload,
        workflow="discharge_to_bill",
        business_key="ENC-1001",
    )


def test_check_delivery_reads_what_the_operation_declares_it_writes():
    connector = _rcm_operation("push_encounter", ["claim", "encounter.discharged_at"])
    assert check_delivery(connector, "submit_claim") == []
    found = check_delivery(connector, "push_encounter")
    assert [(v.system, v.target, v.owner) for v in found] == [
        ("rcm-main", "encounter.discharged_at", "ehr-main")
    ]
    assert (
        found[0].message == "rcm-main does not own encounter.discharged_at (ehr-main is its system of record)"
    )


def test_a_claim_carrying_encounter_data_to_the_rcm_is_not_blocked():
    # The old check guessed domains from payload keys; what counts now is what the operation writes.
    connector = Connector.objects.select_related("system").get(code="rcm-claims")
    delivery = _delivery(
        connector, "submit_claim", {"encounter": {"id": "ENC-1001"}, "coverage": {"plan": "P"}}
    )
    assert check_delivery(connector, "submit_claim") == []
    assert delivery_block(delivery) is None
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert not ExceptionItem.objects.exists()


def test_declared_writes_override_the_reference_table():
    connector = _rcm_operation("submit_claim", ["journal"])
    assert [v.target for v in check_delivery(connector, "submit_claim")] == ["journal"]
    connector = _rcm_operation("submit_claim", [])
    assert check_delivery(connector, "submit_claim") == []


def test_a_blocked_delivery_fails_permanently_with_a_plain_reason():
    connector = _rcm_operation("push_encounter", ["encounter"])
    delivery = _delivery(connector, "push_encounter", {"encounter_id": "ENC-1001"})
    blocked = delivery_block(delivery)
    assert blocked is not None and blocked.status == DeliveryStatus.FAILED
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == (DeliveryStatus.FAILED, 0, None)
    assert delivery.last_error.startswith("Blocked by data ownership: rcm-main does not own encounter")
    item = ExceptionItem.objects.get(delivery=delivery)
    assert item.kind == ExceptionKind.DESTINATION_REJECTED
    assert item.reason.startswith("Not sent to ")
    assert "push encounter for ENC-1001" in item.reason
    assert "encounter belongs to " in item.reason and "ownership exception" in item.reason
    assert item.detail["blocked_by"] == "data_ownership"
    # Blocking twice keeps one open item.
    delivery_block(delivery)
    assert ExceptionItem.objects.filter(delivery=delivery).count() == 1


def test_an_approved_exception_lets_the_delivery_through(engineer, board_member):
    connector = _rcm_operation("push_encounter", ["encounter"])
    exception = {"system": "rcm-main", "domain": "encounter", "reason": "RCM keeps a copy of visits"}
    approve_and_deploy(propose(ChangeKind.OWNERSHIP_EXCEPTION, exception, engineer), board_member)
    assert check_delivery(connector, "push_encounter") == []
    assert delivery_block(_delivery(connector, "push_encounter", {})) is None


def test_review_flags_an_operation_by_what_it_writes(engineer):
    connector = current(ChangeKind.CONNECTOR, "rcm-claims")
    operations = connector["config"]["operations"]
    operations["push_encounter"] = {
        "method": "POST",
        "path": "/v",
        "result_field": "id",
        "writes": ["encounter"],
    }
    operations["push_notes"] = {"method": "POST", "path": "/n", "result_field": "id"}
    cr = propose(ChangeKind.CONNECTOR, connector, engineer)
    assert cr.findings == [
        "Operation push_encounter writes encounter into rcm-main, but ehr-main owns it.",
        "Operation push_notes does not declare what it writes (add writes: [domain, …] to it), "
        "so ownership cannot be checked for it.",
    ]


def test_writes_must_name_domains(engineer):
    from healthsync.governance.kinds import ProposalInvalid

    connector = current(ChangeKind.CONNECTOR, "rcm-claims")
    connector["config"]["operations"]["submit_claim"]["writes"] = "claim"
    with pytest.raises(ProposalInvalid, match="operation submit_claim: writes must be a list"):
        propose(ChangeKind.CONNECTOR, connector, engineer)
    connector["config"]["operations"]["submit_claim"]["writes"] = ["Claim Amount"]
    with pytest.raises(ProposalInvalid, match="'Claim Amount' is not a domain"):
        propose(ChangeKind.CONNECTOR, connector, engineer)


# Needs the call-site patch in healthsync/deliveries.py (H8's report): enabled by itself once deliver() calls
# delivery_block.
needs_call_site = pytest.mark.skipif(
    "delivery_block" not in inspect.getsource(deliveries.deliver),
    reason="healthsync/deliveries.py does not call governance.ownership.delivery_block yet",
)


@needs_call_site
@pytest.mark.django_db(transaction=True)
def test_deliver_never_sends_a_blocked_delivery_and_sends_once_an_exception_is_approved(
    engineer, board_member
):
    with destinations() as (rcm, _erp):
        connector = _rcm_operation("push_encounter", ["encounter"])
        claim = {
            "patient_control_number": "ENC-1001",
            "payer": {"id": "AETNA01"},
            "diagnoses": [{"code": "I10"}],
            "total_charges": "10.00",
        }
        delivery = _delivery(connector, "push_encounter", claim)
        assert deliveries.deliver(delivery.pk) == DeliveryStatus.FAILED
        assert rcm.claim_count == 0, "a blocked delivery must never reach the destination"
        item = ExceptionItem.objects.get(delivery=delivery)
        assert item.reason.startswith("Not sent to ")

        exception = {"system": "rcm-main", "domain": "encounter", "reason": "RCM keeps a copy of visits"}
        approve_and_deploy(propose(ChangeKind.OWNERSHIP_EXCEPTION, exception, engineer), board_member)
        deliveries.delivery_reset(delivery=delivery)
        assert deliveries.deliver(delivery.pk) == DeliveryStatus.SUCCEEDED
        assert rcm.claim_count == 1
        item.refresh_from_db()
        assert item.status == ExceptionStatus.RESOLVED
