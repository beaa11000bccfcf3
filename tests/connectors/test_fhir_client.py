"""The outbound FHIR client against the local FHIR server: idempotent creates, updates, polling with paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connectors.fhir import client
from connectors.fhir.adapter import IDEMPOTENCY_SYSTEM, FhirAdapter
from connectors.fhir.samples import PATIENT, encounter
from connectors.rest.auth import token_cache
from connectors.simulators.fhir_server import FhirServerSimulator
from healthsync.choices import Direction, MessageStatus, Protocol
from healthsync.errors import ConnectorError
from healthsync.models import Connector, Delivery, Message, System

CLAIM: dict[str, Any] = {
    "resourceType": "Claim",
    "status": "active",
    "identifier": [{"system": "urn:healthsync:claim", "value": "CLM-V1001"}],
    "type": {"coding": [{"code": "institutional"}]},
    "use": "claim",
    "patient": {"reference": "Patient/pat-1"},
    "created": "2026-11-25",
    "provider": {"display": "North Campus"},
    "priority": {"coding": [{"code": "normal"}]},
    "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Acme PPO"}}],
}


@pytest.fixture
def fhir() -> Iterator[FhirServerSimulator]:
    token_cache.clear()
    with FhirServerSimulator(page_size=2) as server:
        yield server


def _connector(url: str, direction: str = Direction.OUTBOUND, **config: Any) -> Connector:
    return Connector(
        system=System(code="payer", name="Payer"),
        code="payer-fhir",
        direction=direction,
        protocol=Protocol.FHIR,
        timeout_seconds=3,
        config={"base_url": url, **config},
    )


def test_a_conditional_create_returns_the_existing_resource_on_retry(fhir: FhirServerSimulator) -> None:
    connector = _connector(
        fhir.url, operations={"submit_claim": {"identifier_system": "urn:healthsync:claim"}}
    )
    delivery = Delivery(operation="submit_claim", idempotency_key="k-1", payload=CLAIM)
    first = FhirAdapter().send(connector, delivery)
    second = FhirAdapter().send(connector, delivery)
    assert first.external_id == second.external_id == "claim-1"
    assert fhir.count("Claim") == 1
    assert fhir.requests["POST /Claim"] == 2


def test_a_resource_without_an_identifier_gets_the_idempotency_key_as_one(fhir: FhirServerSimulator) -> None:
    payload = {k: v for k, v in CLAIM.items() if k != "identifier"}
    delivery = Delivery(operation="create", idempotency_key="rcm:claim:V1:1", payload=payload)
    FhirAdapter().send(_connector(fhir.url), delivery)
    FhirAdapter().send(_connector(fhir.url), delivery)
    (stored,) = fhir.resources["Claim"].values()
    assert stored["identifier"] == [{"system": IDEMPOTENCY_SYSTEM, "value": "rcm:claim:V1:1"}]
    assert fhir.count("Claim") == 1


def test_update_puts_the_resource_at_its_id(fhir: FhirServerSimulator) -> None:
    connector = _connector(fhir.url)
    created = client.update(connector, {**PATIENT})
    updated = client.update(connector, {**PATIENT, "birthDate": "1970-03-03"})
    assert (created.created, updated.created) == (True, False)
    assert updated.resource["meta"]["versionId"] == "2"
    assert fhir.resources["Patient"]["pat-1"]["birthDate"] == "1970-03-03"


def test_a_server_refusal_is_permanent_and_carries_the_outcome(fhir: FhirServerSimulator) -> None:
    delivery = Delivery(operation="create", idempotency_key="k", payload={"resourceType": ""})
    with pytest.raises(ConnectorError) as caught:
        FhirAdapter().send(_connector(fhir.url), delivery)
    assert caught.value.permanent
    fhir.put_resource({**CLAIM})
    fhir.put_resource({**CLAIM})
    with pytest.raises(ConnectorError) as caught:
        FhirAdapter().send(
            _connector(fhir.url), Delivery(operation="create", idempotency_key="k", payload=CLAIM)
        )
    assert caught.value.permanent and "More than one resource matches" in caught.value.message


def test_an_unreachable_server_is_a_transient_error() -> None:
    with FhirServerSimulator() as gone:
        url = gone.url
    with pytest.raises(ConnectorError) as caught:
        FhirAdapter().send(_connector(url), Delivery(operation="create", idempotency_key="k", payload=CLAIM))
    assert not caught.value.permanent and "unreachable" in caught.value.message


@pytest.mark.django_db
def test_polling_follows_pages_stores_each_resource_and_only_asks_for_changes(
    fhir: FhirServerSimulator,
) -> None:
    system = System.objects.create(code="ehr", name="EHR", kind="ehr")
    connector = Connector.objects.create(
        system=system,
        code="ehr-fhir-poll",
        name="EHR FHIR poll",
        direction=Direction.INBOUND,
        protocol=Protocol.FHIR,
        config={"base_url": fhir.url, "poll": {"resource_types": ["Encounter"], "page_size": 2}},
    )
    for number in range(5):
        fhir.put_resource(encounter(id=f"e{number}"), resource_id=f"e{number}")
    first = client.poll(connector)
    assert (first.stored, first.duplicates) == (5, 0)
    assert fhir.requests["GET /Encounter"] == 3  # 2 + 2 + 1 through Bundle.link[next]
    stored = Message.objects.order_by("id")
    assert [m.control_id for m in stored] == [f"e{n}/_history/1" for n in range(5)]
    assert {m.message_type for m in stored} == {"Encounter/finished"}
    assert {m.status for m in stored} == {MessageStatus.RECEIVED}

    fhir.put_resource(encounter(id="e1", status="cancelled"), resource_id="e1")
    second = client.poll(connector)
    assert (second.stored, second.duplicates) == (1, 0)
    latest = Message.objects.latest("id")
    assert (latest.control_id, latest.message_type) == ("e1/_history/2", "Encounter/cancelled")
    assert client.poll(connector).stored == 0


def test_test_connection_reads_the_capability_statement(fhir: FhirServerSimulator) -> None:
    ok, detail = FhirAdapter().test_connection(_connector(fhir.url))
    assert ok and "HTTP 200" in detail and "/metadata" in detail
    ok, detail = FhirAdapter().test_connection(_connector("http://127.0.0.1:9"))
    assert not ok and "unreachable" in detail


def test_the_inbound_endpoint_needs_no_probe() -> None:
    connector = Connector(code="in", direction=Direction.INBOUND, protocol=Protocol.FHIR, config={})
    ok, detail = FhirAdapter().test_connection(connector)
    assert ok and "/fhir/in/" in detail


@pytest.mark.django_db
def test_the_poll_task_polls_each_polling_connector_and_survives_a_dead_one(
    fhir: FhirServerSimulator,
) -> None:
    from connectors.fhir.tasks import poll_fhir_connectors

    system = System.objects.create(code="ehr", name="EHR", kind="ehr")
    poll = {"resource_types": ["Encounter"]}
    Connector.objects.create(
        system=system,
        code="live",
        name="Live",
        direction=Direction.INBOUND,
        protocol=Protocol.FHIR,
        config={"base_url": fhir.url, "poll": poll},
    )
    Connector.objects.create(
        system=system,
        code="dead",
        name="Dead",
        direction=Direction.INBOUND,
        protocol=Protocol.FHIR,
        config={"base_url": "http://127.0.0.1:9", "poll": poll},
    )
    Connector.objects.create(
        system=system,
        code="endpoint",
        name="Endpoint",
        direction=Direction.INBOUND,
        protocol=Protocol.FHIR,
        config={},
    )
    fhir.put_resource(encounter())
    assert poll_fhir_connectors() == {"live": 1, "dead": -1}
