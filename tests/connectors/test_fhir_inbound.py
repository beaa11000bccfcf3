"""The inbound FHIR endpoint: authenticated, stored before it answers, bad input answered and kept."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from connectors.fhir.samples import PATIENT, encounter, raw, transaction
from healthsync.choices import Direction, MessageStatus, Protocol
from healthsync.models import (
    CanonicalEvent,
    Connector,
    Message,
    System,
)
from healthsync.pipeline import process_pending
from healthsync.seed import seed_reference_config

KEY = "inbound-k3y-for-tests"


@pytest.fixture
def connector(db: None) -> Connector:
    system = System.objects.create(code="ehr-fhir", name="EHR (FHIR)", kind="ehr")
    connector = Connector(
        system=system,
        code="ehr-fhir-in",
        name="EHR FHIR in",
        direction=Direction.INBOUND,
        protocol=Protocol.FHIR,
        config={"api_key_header": "X-Api-Key"},
    )
    connector.secrets = {"inbound_api_key": KEY}
    connector.save()
    return connector


def post(path: str, body: bytes, **headers: str) -> Any:
    extra = {"HTTP_X_API_KEY": KEY, **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}
    return Client().post(path, body, content_type="application/fhir+json", **extra)


def test_it_stores_an_encounter_before_answering_201(connector: Connector) -> None:
    response = post("/fhir/ehr-fhir-in/Encounter", raw(encounter()))
    assert response.status_code == 201
    message = Message.objects.get(pk=response["X-HealthSync-Message"])
    assert bytes(message.raw) == raw(encounter())
    assert message.status == MessageStatus.RECEIVED
    assert message.message_type == "Encounter/finished"
    assert message.control_id.startswith("enc-1001#")
    assert message.sender == "api-key"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "information"
    assert response["Location"].endswith("/fhir/ehr-fhir-in/Encounter/enc-1001")


def test_a_transaction_bundle_is_split_into_one_message_per_entry(connector: Connector) -> None:
    response = post("/fhir/ehr-fhir-in/", raw(transaction(PATIENT, encounter())))
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created", "201 Created"]
    assert list(Message.objects.order_by("id").values_list("message_type", flat=True)) == [
        "Patient",
        "Encounter/finished",
    ]


def test_a_versioned_resource_uses_its_version_in_the_control_id(connector: Connector) -> None:
    post("/fhir/ehr-fhir-in/Patient", raw({**PATIENT, "meta": {"versionId": "3"}}))
    assert Message.objects.get().control_id == "pat-1/_history/3"


def test_the_same_payload_twice_is_kept_as_a_duplicate_and_answered_200(connector: Connector) -> None:
    first = post("/fhir/ehr-fhir-in/Encounter", raw(encounter()))
    second = post("/fhir/ehr-fhir-in/Encounter", raw(encounter()))
    assert (first.status_code, second.status_code) == (201, 200)
    copy = Message.objects.get(pk=second["X-HealthSync-Message"])
    assert copy.status == MessageStatus.DUPLICATE
    assert copy.duplicate_of_id == int(first["X-HealthSync-Message"])


def test_a_changed_encounter_under_the_same_id_is_a_new_message(connector: Connector) -> None:
    post("/fhir/ehr-fhir-in/Encounter", raw(encounter(status="in-progress")))
    post("/fhir/ehr-fhir-in/Encounter", raw(encounter()))
    assert list(Message.objects.order_by("id").values_list("status", "message_type")) == [
        ("received", "Encounter/in-progress"),
        ("received", "Encounter/finished"),
    ]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "where"),
    [
        ("/fhir/ehr-fhir-in/Encounter", b"{oops", 400, "structure", None),
        (
            "/fhir/ehr-fhir-in/Observation",
            b'{"resourceType": "Observation"}',
            400,
            "not-supported",
            "resourceType",
        ),
        ("/fhir/ehr-fhir-in/Encounter", raw(PATIENT), 400, "invalid", "resourceType"),
        (
            "/fhir/ehr-fhir-in/Encounter",
            raw(encounter(status="done")),
            422,
            "code-invalid",
            "Encounter.status",
        ),
        (
            "/fhir/ehr-fhir-in/Encounter",
            raw(encounter(period={"end": "not a date"})),
            422,
            "value",
            "Encounter.period.end",
        ),
        (
            "/fhir/ehr-fhir-in/",
            raw(transaction(PATIENT, encounter(status="nope"))),
            422,
            "code-invalid",
            "Bundle.entry[1].resource.status",
        ),
    ],
)
def test_bad_input_gets_an_operation_outcome_and_is_kept_as_rejected(
    connector: Connector, path: str, body: bytes, status: int, code: str, where: str | None
) -> None:
    response = post(path, body)
    assert response.status_code == status
    issue = response.json()["issue"][0]
    assert issue["code"] == code and issue["diagnostics"]
    if where:
        assert issue["expression"] == [where]
    kept = Message.objects.get(pk=response["X-HealthSync-Message"])
    assert kept.status == MessageStatus.REJECTED
    assert bytes(kept.raw) == body
    assert kept.error


def test_a_rejected_payload_does_not_block_its_corrected_resend(connector: Connector) -> None:
    post("/fhir/ehr-fhir-in/Encounter", raw(encounter(status="done")))
    assert post("/fhir/ehr-fhir-in/Encounter", raw(encounter())).status_code == 201


def test_it_refuses_a_caller_without_credentials_and_stores_nothing(connector: Connector) -> None:
    for headers in ({}, {"HTTP_X_API_KEY": "wrong"}, {"HTTP_AUTHORIZATION": "Token nope"}):
        response = Client().post(
            "/fhir/ehr-fhir-in/Encounter", raw(encounter()), content_type="application/fhir+json", **headers
        )
        assert response.status_code == 401
        assert response.json()["issue"][0]["code"] == "login"
    assert not Message.objects.exists()


def test_a_drf_token_also_authenticates(connector: Connector) -> None:
    user = User.objects.create_user("ehr-integration")
    token = Token.objects.create(user=user)
    response = Client().post(
        "/fhir/ehr-fhir-in/Encounter",
        raw(encounter()),
        content_type="application/fhir+json",
        HTTP_AUTHORIZATION=f"Token {token.key}",
    )
    assert response.status_code == 201
    assert Message.objects.get().sender == "token:ehr-integration"


def test_an_unknown_connector_is_404_and_a_disabled_one_503(connector: Connector) -> None:
    assert post("/fhir/nope/Encounter", raw(encounter())).status_code == 404
    connector.is_enabled = False
    connector.save()
    assert post("/fhir/ehr-fhir-in/Encounter", raw(encounter())).status_code == 503


def test_it_only_takes_post(connector: Connector) -> None:
    assert Client().get("/fhir/ehr-fhir-in/Encounter", HTTP_X_API_KEY=KEY).status_code == 405


def test_a_connector_limited_to_some_types_rejects_others(connector: Connector) -> None:
    connector.config = {"accepted_types": ["Bundle"]}
    connector.save()
    response = post("/fhir/ehr-fhir-in/Encounter", raw(encounter()))
    assert response.status_code == 400
    assert "does not accept Encounter" in response.json()["issue"][0]["diagnostics"]


def test_a_finished_encounter_becomes_an_encounter_discharged_event(connector: Connector) -> None:
    seed_reference_config()  # the reference config includes the FHIR Encounter mappings
    response = post("/fhir/ehr-fhir-in/Encounter", raw(encounter()))
    post("/fhir/ehr-fhir-in/Encounter", raw(encounter(id="enc-2", status="in-progress", period={})))
    assert response.status_code == 201
    process_pending()
    message = Message.objects.get(pk=response["X-HealthSync-Message"])
    assert message.status == MessageStatus.PROCESSED, message.error
    event = CanonicalEvent.objects.get(message=message)
    assert event.type == "encounter.discharged"
    assert event.data["encounter_id"] == "V1001"
    assert event.data["discharged_at"] == "2026-11-24T15:30:00+00:00"
    assert event.data["patient"] == {"mrn": "MRN-77"}
    assert event.data["patient_class"] == "I"
    # An in-progress encounter is an admission; this one lacks its start, so it fails with the reason.
    admitted = Message.objects.get(control_id__startswith="enc-2#")
    assert admitted.status == MessageStatus.FAILED
    assert "admitted_at" in admitted.error
