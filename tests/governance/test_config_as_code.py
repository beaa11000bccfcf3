from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from connectors.simulators.hl7_builder import adt_a03
from healthsync.choices import ChangeKind, ChangeStatus
from healthsync.governance import services
from healthsync.governance.bench import run_rules
from healthsync.models import (
    ChangeRequest,
    Connector,
    DataOwnership,
    MappingRule,
    MappingSet,
    MappingVersion,
    SampleCase,
    SchemaVersion,
    System,
)
from healthsync.models.governance import CodeTable, WorkflowSla
from healthsync.seed import seed_reference_config
from tests.governance.support import current


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.yaml"))}


def _empty_config() -> None:
    SampleCase.objects.all().delete()
    WorkflowSla.objects.all().delete()
    CodeTable.objects.all().delete()
    ChangeRequest.objects.all().delete()
    MappingSet.objects.update(active_version=None)
    MappingRule.objects.all().delete()
    MappingVersion.objects.all().delete()
    MappingSet.objects.all().delete()
    SchemaVersion.objects.all().delete()
    DataOwnership.objects.all().delete()
    Connector.objects.all().delete()
    System.objects.all().delete()


def test_export_import_export_is_byte_identical(tmp_path, engineer, board_member):
    seed_reference_config()
    DataOwnership.objects.filter(domain="claim").update(steward=board_member)
    first, second = tmp_path / "first", tmp_path / "second"
    call_command("export_config", str(first))
    exported = _tree(first)
    assert "mappings/ehr-adt-a03-discharged.yaml" in exported
    assert b"steward: board" in exported["ownership/claim.yaml"]

    _empty_config()
    call_command("import_config", str(first), "--user", engineer.username)
    requests = list(ChangeRequest.objects.order_by("id"))
    # Workflow SLAs have their defaults in code: an empty database already has them, so they are no change.
    assert len(requests) == len([name for name in exported if not name.startswith("workflow-slas/")])
    assert all(cr.status == ChangeStatus.SUBMITTED for cr in requests)
    assert not Connector.objects.exists(), "import must never write live configuration"
    for cr in requests:
        cr = services.change_request_approve(change_request=cr, actor=board_member)
        services.change_request_deploy(change_request=cr, actor=board_member)

    call_command("export_config", str(second))
    assert _tree(second) == exported


def test_import_of_unchanged_files_creates_nothing(tmp_path, engineer, reference):
    call_command("export_config", str(tmp_path))
    call_command("import_config", str(tmp_path), "--user", engineer.username)
    assert not ChangeRequest.objects.exists()


def test_import_turns_an_edited_file_into_one_change_request(tmp_path, engineer, reference):
    call_command("export_config", str(tmp_path))
    path = tmp_path / "connectors" / "ehr-adt-mllp.yaml"
    path.write_text(path.read_text().replace("port: 2575", "port: 2580"))
    call_command("import_config", str(tmp_path), "--user", engineer.username)
    cr = ChangeRequest.objects.get()
    assert (cr.target_key, cr.before["config"]["port"], cr.after["config"]["port"]) == (
        "ehr-adt-mllp",
        2575,
        2580,
    )
    assert Connector.objects.get(code="ehr-adt-mllp").config["port"] == 2575


def test_import_reports_bad_files_and_keeps_going(tmp_path, engineer, reference):
    call_command("export_config", str(tmp_path))
    (tmp_path / "schemas" / "broken.yaml").write_text("event_type: [unclosed\n")
    (tmp_path / "systems" / "list.yaml").write_text("- a\n- b\n")
    mapping = tmp_path / "mappings" / "ehr-adt-a03-discharged.yaml"
    mapping.write_text(mapping.read_text().replace("transform: upper", "transform: shout", 1))
    with pytest.raises(CommandError) as caught:
        call_command("import_config", str(tmp_path), "--user", engineer.username)
    text = str(caught.value)
    assert "schemas/broken.yaml: not valid YAML" in text
    assert "systems/list.yaml: expected a mapping" in text
    assert "unknown transform 'shout'" in text
    assert not ChangeRequest.objects.exists()


def test_import_refuses_an_unknown_user_or_directory(tmp_path, reference):
    with pytest.raises(CommandError, match="No user"):
        call_command("import_config", str(tmp_path), "--user", "nobody")
    with pytest.raises(CommandError, match="not a directory"):
        call_command("import_config", str(tmp_path / "missing"), "--user", "nobody")


def _save_samples(engineer) -> None:
    code = "ehr-adt-a03-discharged"
    mapping_set = MappingSet.objects.get(code=code)
    message = adt_a03(disposition="home")
    rules = current(ChangeKind.MAPPING, code)["rules"]
    good = run_rules(protocol="hl7v2", event_type="encounter.discharged", rules=rules, message=message)
    assert good.ok, good.error
    services.sample_case_save(
        mapping_set=mapping_set, name="home discharge", message=message, expected=good.data, actor=engineer
    )
    services.sample_case_save(
        mapping_set=mapping_set,
        name="no visit",
        message="MSH|^~\\&|X",
        expected={},
        expect_error=True,
        actor=engineer,
    )


def test_sample_suites_round_trip_with_their_mapping_sets(tmp_path, engineer, board_member):
    seed_reference_config()
    _save_samples(engineer)
    first, second = tmp_path / "first", tmp_path / "second"
    call_command("export_config", str(first))
    exported = _tree(first)
    suite = exported["samples/ehr-adt-a03-discharged.yaml"]
    assert suite.startswith(b"mapping_set: ehr-adt-a03-discharged\ncases:\n- name: home discharge\n")
    assert b"expect_error: true" in suite

    _empty_config()
    call_command("import_config", str(first), "--user", engineer.username)
    assert not SampleCase.objects.exists(), "import must never write live configuration"
    mapping_cr = ChangeRequest.objects.get(target_key="ehr-adt-a03-discharged")
    assert [case["name"] for case in mapping_cr.after["samples"]] == ["home discharge", "no visit"]
    # The imported suite ran on the imported rules at submission.
    assert mapping_cr.suite_passed is True, mapping_cr.suite_result
    assert len(mapping_cr.suite_result["cases"]) == 2
    for cr in ChangeRequest.objects.order_by("id"):
        cr = services.change_request_approve(change_request=cr, actor=board_member)
        services.change_request_deploy(change_request=cr, actor=board_member)

    call_command("export_config", str(second))
    assert _tree(second) == exported


def test_an_edited_sample_suite_imports_as_a_mapping_change_request(
    tmp_path, engineer, board_member, reference
):
    _save_samples(engineer)
    call_command("export_config", str(tmp_path))
    call_command("import_config", str(tmp_path), "--user", engineer.username)
    assert not ChangeRequest.objects.exists(), "an unchanged suite is no change"

    path = tmp_path / "samples" / "ehr-adt-a03-discharged.yaml"
    path.write_text(path.read_text().replace("name: no visit", "name: no visit at all"))
    call_command("import_config", str(tmp_path), "--user", engineer.username)
    cr = ChangeRequest.objects.get()
    assert (cr.kind, cr.target_key) == (ChangeKind.MAPPING, "ehr-adt-a03-discharged")
    assert SampleCase.objects.filter(name="no visit").exists(), "nothing changes before deployment"
    cr = services.change_request_approve(change_request=cr, actor=board_member)
    services.change_request_deploy(change_request=cr, actor=board_member)
    names = set(SampleCase.objects.values_list("name", flat=True))
    assert names == {"home discharge", "no visit at all"}


def test_a_sample_suite_without_its_mapping_set_is_reported(tmp_path, engineer, reference):
    call_command("export_config", str(tmp_path))
    (tmp_path / "samples" / "ghost.yaml").write_text("mapping_set: ghost\ncases:\n- name: x\n")
    with pytest.raises(CommandError) as caught:
        call_command("import_config", str(tmp_path), "--user", engineer.username)
    assert "samples/ghost.yaml: sample 1: a name and a message are required" in str(caught.value)
    (tmp_path / "samples" / "ghost.yaml").write_text(
        "mapping_set: ghost\ncases:\n- {name: x, message: MSH}\n"
    )
    with pytest.raises(CommandError, match=r"samples/ghost\.yaml: there is no mappings/ghost\.yaml"):
        call_command("import_config", str(tmp_path), "--user", engineer.username)
