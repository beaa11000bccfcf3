from __future__ import annotations

import pytest

from connectors.simulators.hl7_builder import adt_a03
from healthsync.choices import ChangeKind
from healthsync.mapping import apply_mapping
from healthsync.models import CanonicalEvent, MappingSet
from healthsync.pipeline import process_pending
from healthsync.registry import connector_registry
from tests.governance.support import approve_and_deploy, mapping_with, propose
from tests.pipeline_support import store

A03 = "ehr-adt-a03-discharged"
pytestmark = pytest.mark.usefixtures("reference")


def test_a_message_in_flight_finishes_on_the_version_it_started_with(engineer, board_member):
    in_flight = MappingSet.objects.select_related("active_version").get(code=A03).active_version
    cr = propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer)
    approve_and_deploy(cr, board_member)
    parsed = connector_registry.get("hl7v2").parse(adt_a03(disposition="home").encode())
    assert apply_mapping(in_flight, parsed).data["disposition"] == "home"


def test_events_record_the_mapping_version_live_when_they_were_made(engineer, board_member):
    store(adt_a03(encounter_id="V1", disposition="home"))
    process_pending()
    approve_and_deploy(
        propose(ChangeKind.MAPPING, mapping_with(A03, disposition={"transform": "upper"}), engineer),
        board_member,
    )
    store(adt_a03(encounter_id="V2", disposition="home"))
    process_pending()
    first, second = (CanonicalEvent.objects.get(subject=key) for key in ("V1", "V2"))
    assert (first.mapping_version.number, first.data["disposition"]) == (1, "home")
    assert (second.mapping_version.number, second.data["disposition"]) == (2, "HOME")
