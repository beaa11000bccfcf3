"""Connector console pages: who may read and author, adapter-validated settings, write-only secrets, health."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from connectors.simulators.fhir_server import FhirServerSimulator
from healthsync.choices import DeliveryStatus, Direction, Protocol
from healthsync.models import Connector, Delivery, Message, System

HX = {"HTTP_HX_REQUEST": "true"}
REST_CONFIG = {
    "base_url": "http://127.0.0.1:9",
    "operations": {"submit_claim": {"method": "POST", "path": "/claims", "result_field": "claim_id"}},
    "auth": {"type": "basic", "username": "healthsync"},
}


@pytest.fixture
def system(db: None) -> System:
    return System.objects.create(code="rcm-main", name="RCM", kind="rcm")


@pytest.fixture
def rest(system: System) -> Connector:
    connector = Connector(
        system=system,
        code="rcm-claims",
        name="RCM claims",
        direction=Direction.OUTBOUND,
        protocol=Protocol.REST,
        config=REST_CONFIG,
    )
    connector.secrets = {"password": "hunter2"}
    connector.save()
    return connector


@pytest.fixture
def fhir_server() -> Iterator[FhirServerSimulator]:
    with FhirServerSimulator() as server:
        yield server


def _form(system: System, **changes: Any) -> dict[str, Any]:
    data = {
        "system": system.pk,
        "code": "payer-fhir",
        "name": "Payer FHIR",
        "direction": Direction.OUTBOUND,
        "protocol": Protocol.FHIR,
        "lane": "financial",
        "is_enabled": "on",
        "config": json.dumps({"base_url": "https://payer.example.org/r4"}),
        "retry_max_attempts": 5,
        "retry_backoff_seconds": 2,
        "timeout_seconds": 10,
        "breaker_threshold": 5,
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("url", ["/connectors/", "/connectors/rcm-claims/", "/connectors/rcm-claims/health/"])
def test_reading_roles_see_the_pages_and_others_get_403(
    client_for: Callable[[User], Client],
    rest: Connector,
    engineer: User,
    board_member: User,
    rcm_analyst: User,
    outsider: User,
    url: str,
) -> None:
    assert client_for(engineer).get(url).status_code == 200
    assert client_for(board_member).get(url).status_code == 200
    assert client_for(rcm_analyst).get(url).status_code == 403
    assert client_for(outsider).get(url).status_code == 403
    assert Client().get(url).status_code == 302


def test_only_authors_may_create_edit_or_test(
    client_for: Callable[[User], Client], rest: Connector, board_member: User
) -> None:
    board = client_for(board_member)
    assert board.get("/connectors/new/").status_code == 403
    assert board.get("/connectors/rcm-claims/edit/").status_code == 403
    assert board.post("/connectors/rcm-claims/test/").status_code == 403
    page = board.get("/connectors/rcm-claims/").content.decode()
    assert "Test connection" not in page and "/edit/" not in page


def test_the_navigation_offers_connectors_to_engineers(
    client_for: Callable[[User], Client], engineer: User, rcm_analyst: User
) -> None:
    assert 'href="/connectors/"' in client_for(engineer).get("/messages/").content.decode()
    assert 'href="/connectors/"' not in client_for(rcm_analyst).get("/exceptions/").content.decode()


def test_an_engineer_creates_a_connector_with_an_encrypted_secret(
    client_for: Callable[[User], Client], system: System, engineer: User
) -> None:
    data = _form(
        system,
        config=json.dumps(
            {
                "base_url": "https://payer.example.org/r4",
                "auth": {"type": "oauth2", "token_url": "https://idp.example.org/token", "client_id": "hs"},
            }
        ),
        secret_client_secret="cl1ent-s3cret",
    )
    response = client_for(engineer).post("/connectors/new/", data)
    assert response.status_code == 302 and response["Location"] == "/connectors/payer-fhir/"
    connector = Connector.objects.get(code="payer-fhir")
    assert connector.secrets == {"client_secret": "cl1ent-s3cret"}
    assert "cl1ent-s3cret" not in connector.secrets_token
    assert "cl1ent-s3cret" not in json.dumps(connector.config)
    entry = LogEntry.objects.get_for_object(connector).get()
    assert entry.actor == engineer
    assert "cl1ent-s3cret" not in json.dumps(entry.changes)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"config": "{not json"}, "Not valid JSON"),
        ({"config": "[1]"}, "must be a JSON object"),
        ({"config": json.dumps({"base_url": "ftp://x"})}, "base_url must be an http"),
        ({"config": json.dumps({"base_url": "http://x", "auth": {"type": "magic"}})}, "auth.type must be"),
        ({"code": "Not A Slug!"}, "slug"),
    ],
)
def test_bad_settings_are_refused_with_the_adapters_words(
    client_for: Callable[[User], Client], system: System, engineer: User, changes: dict, error: str
) -> None:
    response = client_for(engineer).post("/connectors/new/", _form(system, **changes))
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not Connector.objects.exists()


def test_a_stored_secret_is_never_sent_back_to_the_browser(
    client_for: Callable[[User], Client], rest: Connector, engineer: User
) -> None:
    client = client_for(engineer)
    for url in ("/connectors/rcm-claims/edit/", "/connectors/rcm-claims/"):
        page = client.get(url).content.decode()
        assert "hunter2" not in page and rest.secrets_token not in page
        assert "•••• set" in page or "••••&nbsp;set" in page


def _edit(client: Client, rest: Connector, **changes: Any) -> Any:
    data = _form(
        rest.system,
        code=rest.code,
        name=rest.name,
        direction=rest.direction,
        protocol=rest.protocol,
        config=json.dumps(rest.config),
    )
    data.update(changes)
    return client.post(f"/connectors/{rest.code}/edit/", data)


def test_an_empty_secret_keeps_a_new_one_replaces_and_remove_clears(
    client_for: Callable[[User], Client], rest: Connector, engineer: User
) -> None:
    client = client_for(engineer)
    token = rest.secrets_token
    assert _edit(client, rest, name="Renamed").status_code == 302
    rest.refresh_from_db()
    assert rest.secrets == {"password": "hunter2"} and rest.secrets_token == token and rest.name == "Renamed"
    _edit(client, rest, secret_password="correct-horse")
    rest.refresh_from_db()
    assert rest.secrets == {"password": "correct-horse"}
    _edit(client, rest, clear_password="on")
    rest.refresh_from_db()
    assert rest.secrets == {}


def test_a_credential_left_in_the_config_is_moved_into_the_secrets(
    client_for: Callable[[User], Client], rest: Connector, engineer: User
) -> None:
    config = {**REST_CONFIG, "auth": {"type": "api_key", "header": "X-Api-Key", "value": "plain-k3y"}}
    assert _edit(client_for(engineer), rest, config=json.dumps(config)).status_code == 302
    rest.refresh_from_db()
    assert rest.config["auth"] == {"type": "api_key", "header": "X-Api-Key"}
    assert rest.secrets == {"password": "hunter2", "api_key": "plain-k3y"}


def test_the_code_cannot_be_changed_once_created(
    client_for: Callable[[User], Client], rest: Connector, engineer: User
) -> None:
    _edit(client_for(engineer), rest, code="something-else")
    assert Connector.objects.filter(code="rcm-claims").exists()


def test_test_connection_reaches_a_fhir_server(
    client_for: Callable[[User], Client], system: System, engineer: User, fhir_server: FhirServerSimulator
) -> None:
    Connector.objects.create(
        system=system,
        code="payer-fhir",
        name="Payer",
        direction=Direction.OUTBOUND,
        protocol=Protocol.FHIR,
        config={"base_url": fhir_server.url},
    )
    response = client_for(engineer).post("/connectors/payer-fhir/test/", **HX)
    body = response.content.decode()
    assert response.status_code == 200 and "Connection test passed" in body and "<html" not in body
    assert fhir_server.requests["GET /metadata"] == 1


def test_test_connection_reports_an_unreachable_destination(
    client_for: Callable[[User], Client], rest: Connector, engineer: User
) -> None:
    response = client_for(engineer).post("/connectors/rcm-claims/test/", follow=True)
    assert "Connection test failed" in response.content.decode()
    assert "unreachable" in response.content.decode()


def test_test_connection_of_an_mllp_listener_checks_its_port(
    client_for: Callable[[User], Client], system: System, engineer: User
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        Connector.objects.create(
            system=system,
            code="ehr-adt",
            name="ADT",
            direction=Direction.INBOUND,
            protocol=Protocol.HL7V2,
            config={"port": port},
        )
        response = client_for(engineer).post("/connectors/ehr-adt/test/", **HX)
        assert "Connection test passed" in response.content.decode()
    response = client_for(engineer).post("/connectors/ehr-adt/test/", **HX)
    assert "does not accept connections" in response.content.decode()


def test_the_health_panel_shows_traffic_and_the_breaker(
    client_for: Callable[[User], Client], rest: Connector, engineer: User
) -> None:
    now = timezone.now()
    Message.objects.create(connector=rest, raw=b"x", sha256="0" * 64, received_at=now - timedelta(minutes=5))
    Delivery.objects.create(
        connector=rest,
        operation="submit_claim",
        idempotency_key="k-1",
        status=DeliveryStatus.RETRYING,
        last_error="HTTP 503: down for maintenance",
        sent_at=now,
    )
    rest.consecutive_failures = 5
    rest.breaker_open_until = now + timedelta(minutes=1)
    rest.save()
    response = client_for(engineer).get("/connectors/rcm-claims/health/", **HX)
    body = response.content.decode()
    assert "<html" not in body and 'hx-trigger="every 10s"' in body
    assert "5 minutes ago" in body.replace("\xa0", " ")
    assert "HTTP 503: down for maintenance" in body
    assert "Open" in body and "5 consecutive failures" in body
    assert "HX-Request" in response["Vary"]


def test_a_breaker_whose_pause_is_over_shows_half_open(
    client_for: Callable[[User], Client], rest: Connector, engineer: User
) -> None:
    rest.breaker_open_until = timezone.now() - timedelta(seconds=5)
    rest.save()
    body = client_for(engineer).get("/connectors/rcm-claims/health/", **HX).content.decode()
    assert "Half-open" in body and "None yet" in body
