"""Transaction and batch Bundles on the inbound FHIR endpoint: one message per entry through the normal path,
an OperationOutcome per bad entry, and a transaction-/batch-response back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.fhir.bundles import entry_message
from connectors.fhir.samples import PATIENT, encounter, raw, transaction
from healthsync.choices import MessageStatus
from healthsync.models import CanonicalEvent, Connector, Message
from healthsync.pipeline import process_pending
from healthsync.seed import seed_reference_config
from tests.connectors.test_fhir_inbound import connector, post  # noqa: F401 (fixture)

CLAIM: dict[str, Any] = {
    "resourceType": "Claim",
    "id": "claim-1",
    "status": "active",
    "type": {"coding": [{"code": "institutional"}]},
    "use": "claim",
    "patient": {"reference": "Patient/pat-1"},
    "created": "2026-11-24",
    "provider": {"display": "North Campus"},
    "priority": {"coding": [{"code": "normal"}]},
    "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Acme Health"}}],
}


def batch(*resources: dict[str, Any]) -> dict[str, Any]:
    return {**transaction(*resources, bundle_id="b-1"), "type": "batch"}


def test_each_entry_is_stored_on_its_own_with_the_entries_it_refers_to(connector: Connector) -> None:  # noqa: F811
    response = post("/fhir/ehr-fhir-in/", raw(transaction(PATIENT, encounter())))

    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["location"] for e in body["entry"]] == ["Patient/pat-1", "Encounter/enc-1001"]
    ids = [int(i) for i in response["X-HealthSync-Messages"].split(",")]
    patient, visit = (Message.objects.get(pk=pk) for pk in ids)
    assert (patient.message_type, visit.message_type) == ("Patient", "Encounter/finished")
    assert patient.control_id.startswith("pat-1#") and visit.control_id.startswith("enc-1001#")
    assert json.loads(bytes(patient.raw)) == PATIENT
    # The encounter refers to Patient/pat-1: its message carries that entry along, encounter first.
    carried = json.loads(bytes(visit.raw))
    assert [e["resource"]["resourceType"] for e in carried["entry"]] == ["Encounter", "Patient"]
    assert all(m.status == MessageStatus.RECEIVED for m in (patient, visit))


def test_a_bundle_entry_maps_to_its_event_with_the_patient_from_the_bundle(connector: Connector) -> None:  # noqa: F811
    seed_reference_config()
    post("/fhir/ehr-fhir-in/", raw(transaction(PATIENT, encounter())))

    process_pending()

    event = CanonicalEvent.objects.get(type="encounter.discharged")
    assert event.data["encounter_id"] == "V1001"
    assert event.data["patient"]["name"] == "Mara Rivers"
    assert event.data["patient"]["birth_date"] == "1970-03-02"
    assert Message.objects.get(message_type="Patient").status == MessageStatus.IGNORED


def test_a_resent_bundle_is_answered_200_per_entry_and_not_processed_again(connector: Connector) -> None:  # noqa: F811
    post("/fhir/ehr-fhir-in/Encounter", raw(encounter()))  # the encounter alone first
    response = post("/fhir/ehr-fhir-in/", raw(transaction(PATIENT, encounter())))
    again = post("/fhir/ehr-fhir-in/", raw(transaction(PATIENT, encounter())))

    assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created", "200 OK"]
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK", "200 OK"]
    assert Message.objects.exclude(status=MessageStatus.DUPLICATE).count() == 2


def test_a_batch_answers_each_bad_entry_with_its_own_operation_outcome(connector: Connector) -> None:  # noqa: F811
    response = post("/fhir/ehr-fhir-in/", raw(batch(PATIENT, encounter(status="gone"), CLAIM)))

    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "201 Created"]
    issue = body["entry"][1]["response"]["outcome"]["issue"][0]
    assert (issue["code"], issue["expression"]) == ("code-invalid", ["Bundle.entry[1].resource.status"])
    rejected = Message.objects.get(status=MessageStatus.REJECTED)
    assert json.loads(bytes(rejected.raw))["resource"]["status"] == "gone"  # kept for triage
    assert "Bundle.entry[1].resource.status" in rejected.error
    assert set(
        Message.objects.filter(status=MessageStatus.RECEIVED).values_list("message_type", flat=True)
    ) == {
        "Patient",
        "Claim",
    }


def test_a_transaction_with_a_bad_entry_stores_no_entry(connector: Connector) -> None:  # noqa: F811
    response = post("/fhir/ehr-fhir-in/", raw(transaction(PATIENT, encounter(status="gone"))))

    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.status"]
    (kept,) = Message.objects.all()
    assert kept.status == MessageStatus.REJECTED and kept.message_type == "Bundle/transaction"


def test_entries_of_types_the_connector_does_not_take_are_refused(connector: Connector) -> None:  # noqa: F811
    connector.config = {"accepted_types": ["Bundle", "Encounter"]}
    connector.save()

    in_batch = post("/fhir/ehr-fhir-in/", raw(batch(PATIENT, encounter())))
    in_transaction = post("/fhir/ehr-fhir-in/", raw(transaction(PATIENT, encounter(id="enc-2"))))

    assert [e["response"]["status"] for e in in_batch.json()["entry"]] == ["400 Bad Request", "201 Created"]
    assert in_transaction.status_code == 400
    assert "does not accept Patient" in in_transaction.json()["issue"][0]["diagnostics"]


def test_an_entry_without_references_is_its_resource_alone() -> None:
    bundle = transaction(PATIENT, CLAIM, encounter(subject={"identifier": {"value": "MRN-77"}}))
    assert json.loads(entry_message(bundle, 0)) == PATIENT
    assert json.loads(entry_message(bundle, 2))["resourceType"] == "Encounter"
    claim = json.loads(entry_message(bundle, 1))
    assert [e["resource"]["id"] for e in claim["entry"]] == ["claim-1", "pat-1"]
    assert json.loads(entry_message(bundle, 1, skip={0}))["id"] == "claim-1"


@pytest.mark.parametrize("bundle_type", ["collection", "searchset"])
def test_other_bundle_types_are_refused(connector: Connector, bundle_type: str) -> None:  # noqa: F811
    response = post("/fhir/ehr-fhir-in/", raw({**transaction(PATIENT), "type": bundle_type}))
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Bundle.type"]
