from __future__ import annotations

import pytest

from healthsync.choices import ChangeKind
from healthsync.governance.ownership import ownership_check
from healthsync.models import DataOwnership, System
from tests.governance.support import approve_and_deploy, current, mapping_with, propose

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


def test_the_delivery_path_learns_what_a_delivery_may_not_write():
    from healthsync.governance.ownership import delivery_ownership_violations

    assert delivery_ownership_violations(system="rcm-main", operation="submit_claim", payload={"x": 1}) == []
    assert delivery_ownership_violations(
        system="erp-main", operation="submit_claim", payload={"coverage": {"plan_id": "P"}}
    ) == ["erp-main does not own claim", "erp-main does not own coverage.plan_id"]
