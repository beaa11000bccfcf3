from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from connectors.simulators.hl7_builder import adt_a03
from healthsync.choices import ChangeKind, ChangeStatus, VersionStatus
from healthsync.governance import services
from healthsync.governance.bench import run_rules
from healthsync.governance.kinds import ProposalInvalid
from healthsync.mapping import apply_mapping
from healthsync.models import DataOwnership, MappingSet, SampleCase
from healthsync.registry import connector_registry
from tests.governance.support import approve_and_deploy, current, mapping_with, propose

A03 = "ehr-adt-a03-discharged"
pytestmark = pytest.mark.usefixtures("reference")


def _disposition_upper(engineer):
    return propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer)


def test_it_walks_a_mapping_change_from_draft_to_deployed(engineer, board_member):
    before = MappingSet.objects.get(code=A03).active_version
    cr = _disposition_upper(engineer)
    assert cr.status == ChangeStatus.SUBMITTED
    cr = approve_and_deploy(cr, board_member)
    assert cr.status == ChangeStatus.DEPLOYED
    mapping_set = MappingSet.objects.get(code=A03)
    assert mapping_set.active_version.number == before.number + 1
    assert mapping_set.active_version.approved_by == board_member
    before.refresh_from_db()
    assert before.status == VersionStatus.RETIRED
    assert current(ChangeKind.MAPPING, A03) == cr.after


def test_it_refuses_the_author_approving_their_own_change(engineer, board_member):
    board_cr = propose(
        ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), board_member
    )
    with pytest.raises(PermissionDenied, match="Four eyes"):
        services.change_request_approve(change_request=board_cr, actor=board_member)
    board_cr.refresh_from_db()
    assert board_cr.status == ChangeStatus.SUBMITTED


def test_it_refuses_reviews_from_people_outside_the_board(engineer, rcm_analyst, board_member):
    cr = _disposition_upper(engineer)
    other_engineer = type(engineer).objects.create_user("engineer2")
    other_engineer.groups.set(engineer.groups.all())
    for user in (rcm_analyst, other_engineer):
        with pytest.raises(PermissionDenied):
            services.change_request_approve(change_request=cr, actor=user)


def test_it_refuses_engineers_of_no_role_to_propose(outsider):
    with pytest.raises(PermissionDenied):
        propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), outsider)


def test_it_needs_the_stewards_approval_as_well_as_the_boards(engineer, board_member, second_board_member):
    DataOwnership.objects.filter(domain="encounter", field="").update(steward=second_board_member)
    steward_only = type(engineer).objects.create_user("steward")
    DataOwnership.objects.filter(domain="encounter", field="").update(steward=steward_only)
    cr = _disposition_upper(engineer)
    assert "encounter" in cr.domains
    cr = services.change_request_approve(change_request=cr, actor=board_member)
    assert cr.status == ChangeStatus.SUBMITTED
    assert services.approval_state(cr).missing == ["steward, steward of encounter"]
    with pytest.raises(services.GovernanceError):
        services.change_request_deploy(change_request=cr, actor=engineer)
    cr = services.change_request_approve(change_request=cr, comment="as steward", actor=steward_only)
    assert cr.status == ChangeStatus.APPROVED


def test_a_failing_sample_suite_blocks_approval(engineer, board_member):
    mapping_set = MappingSet.objects.get(code=A03)
    message = adt_a03(disposition="01")
    good = run_rules(
        protocol="hl7v2",
        event_type="encounter.discharged",
        rules=current(ChangeKind.MAPPING, A03)["rules"],
        message=message,
    )
    assert good.ok, good.error
    services.sample_case_save(
        mapping_set=mapping_set, name="discharge", message=message, expected=good.data, actor=engineer
    )
    breaking = mapping_with(A03, encounter_id={"source": "PV1-50.1"})
    cr = propose(ChangeKind.MAPPING, breaking, engineer)
    assert cr.suite_passed is False
    assert "encounter_id" in cr.suite_result["cases"][0]["detail"]
    with pytest.raises(services.GovernanceError, match="sample suite fails"):
        services.change_request_approve(change_request=cr, actor=board_member)
    # Sent back, fixed and resubmitted, the suite runs again and passes.
    services.change_request_request_changes(change_request=cr, comment="suite fails", actor=board_member)
    cr = services.change_request_update(
        change_request=cr, after=mapping_with(A03, disposition={"transform": "upper"}), actor=engineer
    )
    cr = services.change_request_submit(change_request=cr, actor=engineer)
    assert cr.suite_passed is True
    assert (
        services.change_request_approve(change_request=cr, actor=board_member).status == ChangeStatus.APPROVED
    )


def test_rollback_restores_the_exact_previous_output(engineer, board_member):
    adapter = connector_registry.get("hl7v2")
    parsed = adapter.parse(adt_a03(disposition="home").encode())
    original = apply_mapping(MappingSet.objects.get(code=A03).active_version, parsed).data
    cr = approve_and_deploy(_disposition_upper(engineer), board_member)
    changed = apply_mapping(MappingSet.objects.get(code=A03).active_version, parsed).data
    assert changed["disposition"] == "HOME" != original["disposition"]
    rollback = services.change_request_rollback(change_request=cr, reason="Broke billing", actor=engineer)
    assert rollback.rollback_of == cr and rollback.status == ChangeStatus.SUBMITTED
    approve_and_deploy(rollback, board_member)
    restored = apply_mapping(MappingSet.objects.get(code=A03).active_version, parsed).data
    assert restored == original


def test_it_refuses_to_deploy_over_a_change_deployed_meanwhile(engineer, board_member):
    first = _disposition_upper(engineer)
    second = propose(ChangeKind.MAPPING, mapping_with(A03, hospital_service={"transform": "upper"}), engineer)
    approve_and_deploy(first, board_member)
    services.change_request_approve(change_request=second, actor=board_member)
    with pytest.raises(services.GovernanceError, match="changed since"):
        services.change_request_deploy(change_request=second, actor=board_member)


def test_reject_and_request_changes_need_a_comment(engineer, board_member):
    cr = _disposition_upper(engineer)
    with pytest.raises(services.GovernanceError, match="comment"):
        services.change_request_reject(change_request=cr, comment=" ", actor=board_member)
    cr = services.change_request_reject(change_request=cr, comment="not needed", actor=board_member)
    assert cr.status == ChangeStatus.REJECTED
    assert cr.reviews.get().comment == "not needed"
    with pytest.raises(services.GovernanceError):
        services.change_request_approve(change_request=cr, actor=board_member)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"transform": "nonsense"}, "unknown transform"),
        ({"argument": "not a dict"}, "argument must be a mapping"),
        ({"target": "encounter_id"}, "written by an earlier rule"),
    ],
)
def test_it_rejects_invalid_mapping_rules(engineer, change, message):
    with pytest.raises(ProposalInvalid, match=message):
        propose(ChangeKind.MAPPING, mapping_with(A03, disposition=change), engineer)


def test_it_rejects_a_proposal_identical_to_what_is_live(engineer):
    with pytest.raises(services.GovernanceError, match="identical"):
        propose(ChangeKind.MAPPING, current(ChangeKind.MAPPING, A03), engineer)


def test_it_deploys_a_new_schema_version_and_retires_the_old(engineer, board_member):
    schema = current(ChangeKind.SCHEMA, "encounter.discharged")
    schema["version"] = "1.1.0"
    schema["json_schema"]["properties"]["ward"] = {"type": "string"}
    cr = propose(ChangeKind.SCHEMA, schema, engineer)
    assert cr.findings == []
    approve_and_deploy(cr, board_member)
    assert current(ChangeKind.SCHEMA, "encounter.discharged")["version"] == "1.1.0"


def test_it_flags_a_breaking_schema_change_with_its_consumers(engineer):
    schema = current(ChangeKind.SCHEMA, "encounter.discharged")
    schema["version"] = "1.1.0"
    schema["json_schema"]["required"].append("disposition")
    cr = propose(ChangeKind.SCHEMA, schema, engineer)
    assert "Breaking schema change" in cr.findings[0]
    assert "ehr-adt-a03-discharged" in cr.findings[0]
    assert cr.findings[1] == "A breaking change needs a new major version."


def test_it_rejects_an_invalid_semantic_version_and_schema(engineer):
    schema = current(ChangeKind.SCHEMA, "encounter.discharged")
    schema["version"] = "1.1"
    schema["json_schema"]["type"] = 12
    with pytest.raises(ProposalInvalid) as caught:
        propose(ChangeKind.SCHEMA, schema, engineer)
    assert any("semantic version" in e for e in caught.value.errors)
    assert any("not a valid JSON Schema" in e for e in caught.value.errors)


def test_connector_changes_are_validated_by_the_adapter(engineer, board_member):
    connector = current(ChangeKind.CONNECTOR, "ehr-adt-mllp")
    connector["config"]["port"] = 70000
    with pytest.raises(ProposalInvalid, match="port"):
        propose(ChangeKind.CONNECTOR, connector, engineer)
    connector["config"]["port"] = 2576
    approve_and_deploy(propose(ChangeKind.CONNECTOR, connector, engineer), board_member)
    assert current(ChangeKind.CONNECTOR, "ehr-adt-mllp")["config"]["port"] == 2576


def test_sample_cases_need_an_author_role(rcm_analyst):
    with pytest.raises(PermissionDenied):
        services.sample_case_save(
            mapping_set=MappingSet.objects.get(code=A03),
            name="x",
            message="MSH",
            expected={},
            actor=rcm_analyst,
        )
    assert not SampleCase.objects.exists()
