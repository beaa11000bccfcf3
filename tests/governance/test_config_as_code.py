from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from healthsync.choices import ChangeStatus
from healthsync.governance import services
from healthsync.models import (
    ChangeRequest,
    Connector,
    DataOwnership,
    MappingRule,
    MappingSet,
    MappingVersion,
    SchemaVersion,
    System,
)
from healthsync.seed import seed_reference_config


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.yaml"))}


def _empty_config() -> None:
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
    assert len(requests) == len(exported)
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
