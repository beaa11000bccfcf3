"""The workflow seed and the HL7 builders for A13, BAR^P05 and MDM^T02."""

from __future__ import annotations

import pytest

from connectors.hl7v2.reader import parse
from connectors.simulators import hl7_builder
from healthsync.models import Connector, MappingSet, SchemaVersion
from healthsync.seed import seed_reference_config
from healthsync.seed_workflows import ERP_OPERATIONS, seed_workflow_config
from workflows import tasks

pytestmark = pytest.mark.django_db


def test_the_workflow_seed_adds_mappings_schemas_and_erp_operations_once() -> None:
    seed_reference_config()
    seed_workflow_config()
    seed_workflow_config()

    assert MappingSet.objects.filter(message_type__in=["ADT^A13", "BAR^P05", "MDM^T02"]).count() == 3
    assert SchemaVersion.objects.filter(event_type="coding.completed").count() == 1
    erp = Connector.objects.get(code="erp-journals")
    assert set(ERP_OPERATIONS) <= set(erp.config["operations"]) and "post_accrual" in erp.config["operations"]
    erp.full_clean()
    assert "BAR^P05" in Connector.objects.get(code="ehr-adt-mllp").config["accepted_types"]


def test_the_seed_leaves_an_operation_the_board_changed_alone() -> None:
    seed_reference_config()
    erp = Connector.objects.get(code="erp-journals")
    erp.config["operations"]["post_journal"] = {"method": "POST", "path": "/gl/v2", "result_field": "id"}
    erp.save()
    seed_workflow_config()
    erp.refresh_from_db()
    assert erp.config["operations"]["post_journal"]["path"] == "/gl/v2"


def test_the_builders_make_parseable_messages_with_their_segments() -> None:
    coding = parse(hl7_builder.bar_p05())
    assert coding.header.message_type == "BAR^P05"
    assert coding.get("DRG-1.1") == "343" and coding.get_all("PR1[*]-3.1") == ["0DTJ4ZZ"]
    cancel = parse(hl7_builder.adt_a13(control_id="C-1"))
    assert cancel.header.message_type == "ADT^A13" and cancel.get("PV1-45.1") == ""
    document = parse(hl7_builder.mdm_t02())
    assert document.get("TXA-2.1") == "DS" and document.get("TXA-17.1") == "AU"
    with pytest.raises(TypeError, match="unknown HL7 builder fields"):
        hl7_builder.bar_p05(dgr="1")


def test_the_scheduled_tasks_run_on_an_empty_database() -> None:
    assert tasks.sla_check() == 0
    assert tasks.release_bill_holds() == 0
