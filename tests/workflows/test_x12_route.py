"""The claim goes to the RCM as an X12 837I where the claims connector is X12, and as JSON where it is REST."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from connectors.simulators import hl7_builder
from healthsync.choices import RunStatus
from healthsync.deliveries import connector_for_operation
from healthsync.models import Connector, Delivery
from healthsync.seed_workflows import X12_CLAIMS_CONNECTOR, claims_route_x12
from tests.pipeline_support import feed
from tests.workflows.support import workflow_destinations
from workflows.models import ReimbursementRate, WorkflowRun

pytestmark = pytest.mark.django_db


def test_with_the_x12_route_the_discharge_sends_one_validated_837_to_the_rcm() -> None:
    with workflow_destinations() as (rcm, erp):
        connector = claims_route_x12()
        feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())
        feed(hl7_builder.adt_a03())  # the discharge again: no second 837

    assert connector.config["url"] == Connector.objects.get(code="rcm-claims").config["base_url"] + "/x12/837"
    assert rcm.claim_count == 0  # nothing went to the JSON claims API
    (batch,) = rcm.batches.values()
    assert batch["accepted"] and "IK5*A" in batch["999"]
    assert [c["claim_id"] for c in batch["claims"]] == ["V1001"] and batch["claims"][0]["amount"] == "3250.5"
    run = WorkflowRun.objects.get(workflow="discharge_to_bill", business_key="V1001")
    assert run.status == RunStatus.COMPLETED and run.context["claim_id"] == "B000001"
    claim = Delivery.objects.get(operation="submit_claim")
    assert claim.connector.code == X12_CLAIMS_CONNECTOR and claim.response["ack"] == ["A"]
    assert erp.entry_count == 1


def test_the_json_route_stays_for_a_connector_configured_for_json() -> None:
    with workflow_destinations() as (rcm, _):
        assert connector_for_operation("submit_claim").code == "rcm-claims"
        feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())
    assert rcm.claim_count == 1 and not rcm.batches


def test_load_demo_routes_claims_as_x12_or_json_and_seeds_the_default_rate() -> None:
    call_command("load_demo", "--no-users", "--claims", "x12")
    assert connector_for_operation("submit_claim").code == X12_CLAIMS_CONNECTOR
    assert ReimbursementRate.objects.get(payer_id="*").percent == 80
    call_command("load_demo", "--no-users", "--claims", "json")
    assert connector_for_operation("submit_claim").code == "rcm-claims"
