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


# Per-protocol config forms ---------------------------------------------------------------------------


def _form_page_fields(page: str) -> set[str]:
    import re

    return set(re.findall(r'name="((?:cfg|secret)_[a-z_]+)"', page))


def test_every_registered_protocol_declares_a_config_form() -> None:
    from healthsync.forms import config_forms
    from healthsync.registry import connector_registry

    assert set(connector_registry.protocols()) <= {form.protocol for form in config_forms.all()}


@pytest.mark.parametrize(
    ("protocol", "direction", "expected"),
    [
        ("hl7v2", "inbound", {"cfg_port", "cfg_tls_cert_file", "cfg_accepted_types"}),
        ("rest", "outbound", {"cfg_base_url", "cfg_auth__type", "cfg_operations", "secret_client_secret"}),
        ("file", "inbound", {"cfg_source__host", "cfg_source__host_key", "secret_sftp_password"}),
        ("database", "inbound", {"cfg_table", "cfg_mark_column", "cfg_tiebreak_column", "secret_dsn"}),
        ("soap", "outbound", {"cfg_wsdl", "cfg_endpoint", "cfg_operations", "secret_password"}),
    ],
)
def test_the_new_connector_page_asks_for_the_chosen_protocols_settings(
    client_for: Callable[[User], Client], engineer: User, protocol: str, direction: str, expected: set[str]
) -> None:
    page = client_for(engineer).get(f"/connectors/new/?protocol={protocol}&direction={direction}")
    fields = _form_page_fields(page.content.decode())
    assert expected <= fields
    # Nothing of another protocol or the other direction.
    assert "cfg_wsdl" not in fields or protocol == "soap"
    assert "cfg_destination__path" not in fields


def test_a_database_connector_is_created_from_its_fields_with_the_dsn_encrypted(
    client_for: Callable[[User], Client], system: System, engineer: User
) -> None:
    dsn = "postgresql://reporter:pa55@reporting.example.org/epic"
    data = _form(
        system,
        code="epic-adt-db",
        protocol=Protocol.DATABASE,
        direction=Direction.INBOUND,
        config="{}",
        cfg_table="reporting.adt_events",
        cfg_columns="id, mrn , event",
        cfg_mark_column="updated_at",
        cfg_tiebreak_column="id",
        cfg_batch_size="200",
        cfg_query="",
        secret_dsn=dsn,
    )
    response = client_for(engineer).post("/connectors/new/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    connector = Connector.objects.get(code="epic-adt-db")
    assert connector.config == {
        "table": "reporting.adt_events",
        "columns": ["id", "mrn", "event"],
        "mark_column": "updated_at",
        "tiebreak_column": "id",
        "batch_size": 200,
    }
    assert connector.secrets == {"dsn": dsn}
    client = client_for(engineer)
    for url in ("/connectors/epic-adt-db/edit/", "/connectors/epic-adt-db/"):
        page = client.get(url).content.decode()
        assert "pa55" not in page and "reporter" not in page
    edit = client.get("/connectors/epic-adt-db/edit/").content.decode()
    assert 'value="reporting.adt_events"' in edit and 'value="id, mrn, event"' in edit


def test_an_adapter_error_is_shown_at_the_field_it_names(
    client_for: Callable[[User], Client], system: System, engineer: User
) -> None:
    data = _form(
        system,
        code="erp-soap",
        protocol=Protocol.SOAP,
        config="{}",
        cfg_wsdl="ftp://erp.example.org/x.wsdl",
        cfg_operations=json.dumps({"post_journal": {"operation": "Submit_Accounting_Journal"}}),
    )
    response = client_for(engineer).post("/connectors/new/", data)
    assert response.status_code == 400
    form = response.context["form"]
    assert form.errors["cfg_wsdl"] == ["wsdl must be an http:// or https:// URL"]
    assert "config" not in form.errors
    assert not Connector.objects.exists()


def test_a_field_edit_wins_and_an_unchanged_field_keeps_a_json_edit(
    client_for: Callable[[User], Client], rest: Connector, engineer: User
) -> None:
    client = client_for(engineer)
    page = client.get("/connectors/rcm-claims/edit/")
    form = page.context["form"]
    data = {name: value for name, value in form.initial.items() if value is not None}
    data = {**data, **{f.name: f.value() for f in form.connector_fields() if f.value() is not None}}
    data["is_enabled"] = "on"
    for field in form.config_sections()[0]["fields"] + form.config_sections()[1]["fields"]:
        value = field.value()
        data[field.html_name] = (
            json.dumps(value) if isinstance(value, dict) else ("" if value is None else value)
        )
    # In the JSON box someone adds headers; in the fields, the base URL changes.
    data["config"] = json.dumps({**REST_CONFIG, "headers": {"X-Tenant": "north"}})
    data["cfg_base_url"] = "https://rcm.example.org/api"
    data.pop("code", None)
    response = client.post("/connectors/rcm-claims/edit/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    rest.refresh_from_db()
    assert rest.config["base_url"] == "https://rcm.example.org/api"
    assert rest.config["headers"] == {"X-Tenant": "north"}
    assert rest.config["auth"] == {"type": "basic", "username": "healthsync"}
    assert rest.secrets == {"password": "hunter2"}


def test_an_sftp_password_left_in_the_config_moves_into_the_secrets(
    client_for: Callable[[User], Client], system: System, engineer: User
) -> None:
    source = {
        "type": "sftp",
        "host": "drop",
        "username": "payroll",
        "password": "s3cret",
        "host_key": "k",
        "path": "/",
    }
    layout = {"format": "csv", "fields": [{"name": "amount"}]}
    data = _form(
        system,
        code="payroll-drop",
        protocol=Protocol.FILE,
        direction=Direction.INBOUND,
        config=json.dumps({"source": source, "layout": layout}),
    )
    assert client_for(engineer).post("/connectors/new/", data).status_code == 302
    connector = Connector.objects.get(code="payroll-drop")
    assert "password" not in connector.config["source"]
    assert connector.secrets == {"sftp_password": "s3cret"}
