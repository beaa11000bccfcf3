from __future__ import annotations

import csv
import io

import pytest
from auditlog.models import LogEntry
from django.urls import reverse

from connectors.simulators.hl7_builder import adt_a03
from healthsync.choices import ChangeKind, ChangeStatus
from healthsync.models import ChangeRequest, MappingSet, SampleCase
from tests.governance.support import current, mapping_with, propose

A03 = "ehr-adt-a03-discharged"
pytestmark = pytest.mark.usefixtures("reference")


def _rules_post(rules, **extra):
    data = {
        "rules-TOTAL_FORMS": str(len(rules)),
        "rules-INITIAL_FORMS": str(len(rules)),
        "rules-MIN_NUM_FORMS": "0",
        "rules-MAX_NUM_FORMS": "1000",
        "title": "Upper-case the disposition",
        "reason": "The RCM expects codes in capitals.",
        **extra,
    }
    for index, rule in enumerate(rules):
        for name in ("target", "source", "transform", "description"):
            data[f"rules-{index}-{name}"] = rule[name]
        data[f"rules-{index}-argument"] = (
            "" if not rule["argument"] else __import__("json").dumps(rule["argument"])
        )
        if rule["required"]:
            data[f"rules-{index}-required"] = "on"
    return data


@pytest.mark.parametrize(
    "url",
    [
        reverse("governance_inbox"),
        reverse("governance_mappings"),
        reverse("governance_bench", args=[A03]),
        reverse("governance_audit"),
        reverse("governance_mapping_edit", args=[A03]),
        reverse("governance_propose", args=["connector"]),
    ],
)
def test_outsiders_get_403(client_for, outsider, url):
    assert client_for(outsider).get(url).status_code == 403


@pytest.mark.parametrize(
    ("role", "url", "status"),
    [
        ("executive", "governance_inbox", 200),
        ("rcm_analyst", "governance_inbox", 200),
        ("executive", "governance_audit", 403),
        ("rcm_analyst", "governance_mappings", 403),
        ("board_member", "governance_audit", 200),
        ("engineer", "governance_mappings", 200),
    ],
)
def test_each_role_sees_its_part(request, client_for, role, url, status):
    user = request.getfixturevalue(role)
    assert client_for(user).get(reverse(url)).status_code == status


def test_an_engineer_authors_a_mapping_version_in_the_form_and_submits_it(client_for, engineer):
    client = client_for(engineer)
    page = client.get(reverse("governance_mapping_edit", args=[A03]))
    assert b"PV1-19.1" in page.content
    rules = current(ChangeKind.MAPPING, A03)["rules"]
    for rule in rules:
        if rule["target"] == "disposition":
            rule["transform"] = "upper"
    response = client.post(reverse("governance_mapping_edit", args=[A03]), _rules_post(rules))
    cr = ChangeRequest.objects.get()
    assert response.status_code == 302 and response.url == reverse("governance_change", args=[cr.pk])
    assert cr.status == ChangeStatus.DRAFT
    detail = client.get(response.url)
    assert b"disposition" in detail.content and b"upper" in detail.content
    response = client.post(reverse("governance_transition", args=[cr.pk, "submit"]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    cr.refresh_from_db()
    assert cr.status == ChangeStatus.SUBMITTED


def test_the_rule_form_shows_bad_settings_json(client_for, engineer):
    rules = current(ChangeKind.MAPPING, A03)["rules"]
    data = _rules_post(rules)
    data["rules-0-argument"] = "{not json"
    response = client_for(engineer).post(reverse("governance_mapping_edit", args=[A03]), data)
    assert response.status_code == 400
    assert b"Not valid JSON" in response.content
    assert not ChangeRequest.objects.exists()


def test_the_board_sees_diff_impact_and_approves_with_htmx(client_for, engineer, board_member):
    cr = propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer)
    client = client_for(board_member)
    inbox = client.get(reverse("governance_inbox"))
    assert f"CR-{cr.pk}".encode() in inbox.content
    page = client.get(reverse("governance_change", args=[cr.pk]))
    assert b"ehr-adt-mllp" in page.content  # impact: the connector feeding it
    assert b"discharge_to_bill" in page.content  # impact: the subscribed workflow
    response = client.post(
        reverse("governance_review", args=[cr.pk]),
        {"decision": "approve", "comment": "fine"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert b'id="change-workspace"' in response.content and b"<html" not in response.content
    cr.refresh_from_db()
    assert cr.status == ChangeStatus.APPROVED
    client.post(reverse("governance_transition", args=[cr.pk, "deploy"]))
    cr.refresh_from_db()
    assert cr.status == ChangeStatus.DEPLOYED


def test_the_author_cannot_approve_their_own_change_from_the_ui(client_for, board_member):
    cr = propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), board_member)
    response = client_for(board_member).post(
        reverse("governance_review", args=[cr.pk]), {"decision": "approve"}
    )
    assert response.status_code == 403
    cr.refresh_from_db()
    assert cr.status == ChangeStatus.SUBMITTED


def test_rejecting_without_a_comment_shows_why(client_for, engineer, board_member):
    cr = propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer)
    response = client_for(board_member).post(
        reverse("governance_review", args=[cr.pk]),
        {"decision": "reject", "comment": ""},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 400
    assert b"a comment is required" in response.content


def test_drafts_are_private_to_their_author(client_for, engineer, board_member):
    cr = propose(
        ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer, submit=False
    )
    assert client_for(board_member).get(reverse("governance_change", args=[cr.pk])).status_code == 403
    assert client_for(engineer).get(reverse("governance_change", args=[cr.pk])).status_code == 200


def test_the_bench_shows_the_event_schema_result_and_rule_provenance(client_for, engineer):
    response = client_for(engineer).post(
        reverse("governance_bench", args=[A03]),
        {"message": adt_a03(encounter_id="V777").replace("\r", "\n"), "save_as": "plain discharge"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "V777" in body and "PV1-19.1" in body
    assert "Valid against schema 1.0.0" in body
    case = SampleCase.objects.get(name="plain discharge")
    assert case.expected["encounter_id"] == "V777"


def test_the_bench_runs_a_proposal_and_explains_a_refused_message(client_for, engineer):
    cr = propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer)
    response = client_for(engineer).post(
        reverse("governance_bench", args=[A03]),
        {"proposal": str(cr.pk), "message": adt_a03(include_discharge_time=False)},
        HTTP_HX_REQUEST="true",
    )
    assert b"The mapping refuses this message" in response.content
    assert b"discharged_at" in response.content
    garbage = client_for(engineer).post(reverse("governance_bench", args=[A03]), {"message": "not hl7"})
    assert b"cannot be read" in garbage.content


def test_proposing_a_connector_change_as_yaml(client_for, engineer):
    client = client_for(engineer)
    page = client.get(reverse("governance_propose", args=["connector"]) + "?key=ehr-adt-mllp")
    assert b"port: 2575" in page.content
    document = page.context["form"].initial["document"].replace("port: 2575", "port: 2590")
    response = client.post(
        reverse("governance_propose", args=["connector"]),
        {"title": "New port", "reason": "Firewall", "document": document},
    )
    cr = ChangeRequest.objects.get()
    assert response.status_code == 302
    assert cr.after["config"]["port"] == 2590
    bad = client.post(
        reverse("governance_propose", args=["connector"]),
        {"title": "x", "reason": "y", "document": "port: [oops"},
    )
    assert bad.status_code == 400 and b"not valid YAML" in bad.content


def test_the_audit_page_filters_and_exports_csv(client_for, engineer, board_member):
    cr = propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer)
    client = client_for(board_member)
    client.post(reverse("governance_review", args=[cr.pk]), {"decision": "approve"})
    client.post(reverse("governance_transition", args=[cr.pk, "deploy"]))
    page = client.get(reverse("governance_audit"), {"actor": "board", "model": "mappingset"})
    assert page.status_code == 200
    entries = list(page.context["page"].object_list)
    assert entries and all(e.actor == board_member for e in entries)
    assert entries[0].additional_data == {"change_request": cr.pk}
    export = client.get(reverse("governance_audit"), {"actor": "engineer", "format": "csv"})
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert rows[0][:3] == ["timestamp", "actor", "action"]
    assert {row[1] for row in rows[1:]} == {"engineer"}


def test_audit_rows_cannot_be_changed_or_deleted_in_the_admin(client, admin_user, engineer):
    propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer)
    entry = LogEntry.objects.first()
    client.force_login(admin_user)
    delete = client.post(reverse("admin:auditlog_logentry_delete", args=[entry.pk]), {"post": "yes"})
    assert delete.status_code == 403
    assert LogEntry.objects.filter(pk=entry.pk).exists()
    assert client.get(reverse("admin:auditlog_logentry_add")).status_code == 403
    assert MappingSet.objects.filter(code=A03).exists()
