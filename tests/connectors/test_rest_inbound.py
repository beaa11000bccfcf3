"""The inbound REST/JSON endpoint: authenticated, stored before it answers, bad input answered and kept."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client
from rest_framework.authtoken.models import Token

from connectors.rest.adapter import RestAdapter
from healthsync import ingest
from healthsync.choices import Direction, Lane, MessageStatus, Protocol
from healthsync.forms import config_forms
from healthsync.models import CanonicalEvent, Connector, Message, System
from healthsync.pipeline import process_pending
from healthsync.seed import rule_spec, seed_mappings, seed_schemas

KEY = "rest-inbound-k3y-for-tests"
URL = "/api/v1/inbound/erp-json-in/"
STATUS = {"type": "ap_invoice_status", "id": "EVT-1", "invoice": "INV-9", "status": "paid"}


def body(**changes: Any) -> bytes:
    return json.dumps({**STATUS, **changes}).encode()


def _connector(code: str, **fields: Any) -> Connector:
    system, _ = System.objects.get_or_create(code="erp-main", defaults={"name": "ERP", "kind": "erp"})
    connector = Connector(
        system=system,
        code=code,
        name=code,
        direction=fields.pop("direction", Direction.INBOUND),
        protocol=fields.pop("protocol", Protocol.REST),
        lane=Lane.FINANCIAL,
        config=fields.pop("config", {}),
        **fields,
    )
    connector.secrets = {"inbound_api_key": KEY}
    connector.save()
    return connector


@pytest.fixture
def connector(db: None) -> Connector:
    return _connector("erp-json-in")


def post(payload: bytes, *, url: str = URL, content_type: str = "application/json", **headers: str) -> Any:
    extra = {"HTTP_X_API_KEY": KEY, **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}
    return Client().post(url, payload, content_type=content_type, **extra)


def problem_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["detail"] and problem["type"].startswith("/api/problems/")
    return problem


def test_it_stores_a_json_object_before_answering_202(connector: Connector) -> None:
    response = post(body())

    assert response.status_code == 202
    answer = response.json()
    assert answer == {"message_id": answer["message_id"], "status": "received"}
    assert response["Location"].endswith(f"/api/v1/messages/{answer['message_id']}/")
    message = Message.objects.get(pk=answer["message_id"])
    assert bytes(message.raw) == body()
    assert message.status == MessageStatus.RECEIVED
    assert (message.message_type, message.control_id, message.sender) == (
        "ap_invoice_status",
        "EVT-1",
        "api-key",
    )
    assert message.lane == Lane.FINANCIAL


def test_a_resend_is_answered_200_with_the_first_message_id(connector: Connector) -> None:
    first = post(body()).json()["message_id"]

    response = post(body())

    assert response.status_code == 200
    answer = response.json()
    assert answer["message_id"] == first and answer["status"] == "duplicate"
    assert Message.objects.get(pk=answer["duplicate_id"]).status == MessageStatus.DUPLICATE
    assert response["Location"].endswith(f"/api/v1/messages/{first}/")


def test_the_idempotency_key_is_the_message_id_and_wins_over_the_id_field(connector: Connector) -> None:
    # The id field names the invoice here; each status update is its own message, told apart by the key.
    approved = post(body(status="approved"), **{"IDEMPOTENCY_KEY": "k-1"})
    paid = post(body(status="paid"), **{"IDEMPOTENCY_KEY": "k-2"})
    again = post(body(status="paid"), **{"IDEMPOTENCY_KEY": "k-2"})

    assert (approved.status_code, paid.status_code, again.status_code) == (202, 202, 200)
    assert again.json()["message_id"] == paid.json()["message_id"]
    assert Message.objects.get(pk=paid.json()["message_id"]).control_id == "k-2"


def test_type_and_id_come_from_the_configured_fields_or_a_fixed_type(connector: Connector) -> None:
    connector.config = {"type_field": "header.kind", "id_field": "header.event_id"}
    connector.save()
    nested = json.dumps({"header": {"kind": "po_receipt", "event_id": "R-7"}, "po": "PO-1"}).encode()
    message = Message.objects.get(pk=post(nested).json()["message_id"])
    assert (message.message_type, message.control_id) == ("po_receipt", "R-7")

    connector.config = {"message_type": "supplier_row", "id_field": "supplier_id"}
    connector.save()
    row = json.dumps({"type": "ignored", "supplier_id": "S-12", "name": "Medline"}).encode()
    message = Message.objects.get(pk=post(row).json()["message_id"])
    assert (message.message_type, message.control_id) == ("supplier_row", "S-12")


def test_a_batch_stores_each_object_as_its_own_message_answered_item_by_item(connector: Connector) -> None:
    batch = [STATUS, {**STATUS, "id": "EVT-2"}, STATUS, {"type": "ap_invoice_status"}, "not an object"]

    response = post(json.dumps(batch).encode())

    assert response.status_code == 207
    answer = response.json()
    assert (answer["received"], answer["duplicates"], answer["rejected"]) == (2, 1, 2)
    items = answer["items"]
    assert [i["http_status"] for i in items] == [202, 202, 200, 422, 400]
    assert [i["status"] for i in items] == ["received", "received", "duplicate", "rejected", "rejected"]
    assert items[2]["message_id"] == items[0]["message_id"]
    assert items[0]["location"].endswith(f"/api/v1/messages/{items[0]['message_id']}/")
    assert items[3]["problem"]["errors"][0]["field"] == "id"
    assert Message.objects.count() == 5
    first = Message.objects.get(pk=items[0]["message_id"])
    assert json.loads(bytes(first.raw)) == STATUS and first.control_id == "EVT-1"
    kept = Message.objects.get(pk=items[4]["message_id"])
    assert kept.status == MessageStatus.REJECTED and json.loads(bytes(kept.raw)) == "not an object"


def test_a_batch_sent_with_an_idempotency_key_gives_each_item_its_own_id(connector: Connector) -> None:
    batch = json.dumps([{"type": "po_receipt"}, {"type": "po_receipt"}]).encode()

    first = post(batch, **{"IDEMPOTENCY_KEY": "batch-9"}).json()
    again = post(batch, **{"IDEMPOTENCY_KEY": "batch-9"}).json()

    ids = [Message.objects.get(pk=i["message_id"]).control_id for i in first["items"]]
    assert ids == ["batch-9#0", "batch-9#1"]
    assert [i["status"] for i in again["items"]] == ["duplicate", "duplicate"]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"{not json", "not valid JSON (line 1, column 2)"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'"just text"', "must be a JSON object"),
        (b"[]", "batch is empty"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400_and_kept_as_rejected(
    connector: Connector, payload: bytes, words: str
) -> None:
    response = post(payload)

    problem = problem_of(response, 400)
    assert words in problem["detail"]
    kept = Message.objects.get(pk=problem["message_id"])
    assert str(kept.pk) == response["X-HealthSync-Message"]
    assert kept.status == MessageStatus.REJECTED and bytes(kept.raw) == payload
    assert words in kept.error


@pytest.mark.parametrize(
    ("payload", "field", "type_"),
    [
        ({"id": "EVT-1"}, "type", "missing-type"),
        ({"type": "ap_invoice_status", "id": ""}, "id", "missing-id"),
        ({"type": {"nested": "object"}, "id": "EVT-1"}, "type", "missing-type"),
        ({"type": "x" * 41, "id": "EVT-1"}, "type", "missing-type"),
    ],
)
def test_a_missing_type_or_id_is_422_and_kept_as_rejected(
    connector: Connector, payload: dict[str, Any], field: str, type_: str
) -> None:
    problem = problem_of(post(json.dumps(payload).encode()), 422)

    assert problem["type"] == f"/api/problems/{type_}"
    assert problem["errors"][0]["field"] == field
    kept = Message.objects.get(pk=problem["message_id"])
    assert kept.status == MessageStatus.REJECTED and json.loads(bytes(kept.raw)) == payload


def test_a_rejected_body_does_not_block_its_corrected_resend(connector: Connector) -> None:
    post(json.dumps({"id": "EVT-1"}).encode())
    assert post(body()).status_code == 202


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/json; charset=latin-1", "multipart/form-data; boundary=x"],
)
def test_a_body_that_is_not_utf8_json_is_415_and_not_stored(connector: Connector, content_type: str) -> None:
    problem_of(post(body(), content_type=content_type), 415)
    assert not Message.objects.exists()


def test_a_json_suffix_media_type_is_accepted(connector: Connector) -> None:
    assert post(body(), content_type="application/vnd.erp.invoice+json; charset=UTF-8").status_code == 202


def test_an_odd_accept_header_does_not_cost_the_sender_its_message(connector: Connector) -> None:
    response = post(body(), ACCEPT="application/xml")
    assert response.status_code == 202 and response.json()["status"] == "received"


def test_a_body_above_the_connectors_limit_is_413_and_not_stored(connector: Connector, settings: Any) -> None:
    connector.config = {"max_body_bytes": len(body())}
    connector.save()
    problem_of(post(body(note="x")), 413)
    assert post(body()).status_code == 202  # exactly at the limit is fine

    connector.config = {}
    connector.save()
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 32  # Django's own limit applies as well
    problem_of(post(body(id="EVT-big")), 413)
    assert not Message.objects.filter(control_id="EVT-big").exists()


def test_it_refuses_a_caller_without_credentials_and_stores_nothing(connector: Connector) -> None:
    for headers in ({}, {"HTTP_X_API_KEY": "wrong"}, {"HTTP_AUTHORIZATION": "Token nope"}):
        response = Client().post(URL, body(), content_type="application/json", **headers)
        problem_of(response, 401)
        assert response["WWW-Authenticate"] == "Token"
    assert not Message.objects.exists()


def test_a_console_session_is_not_a_credential(connector: Connector, client_for: Any, engineer: User) -> None:
    # Machine callers only: a signed-in browser (any role) cannot post messages without a token or key.
    response = client_for(engineer).post(URL, body(), content_type="application/json")
    problem_of(response, 401)
    assert not Message.objects.exists()


def test_a_drf_token_also_authenticates(connector: Connector) -> None:
    user = User.objects.create_user("erp-integration")
    token = Token.objects.create(user=user)
    response = Client().post(
        URL, body(), content_type="application/json", HTTP_AUTHORIZATION=f"Token {token.key}"
    )
    assert response.status_code == 202
    assert Message.objects.get().sender == "token:erp-integration"

    user.is_active = False
    user.save()
    response = Client().post(
        URL, body(), content_type="application/json", HTTP_AUTHORIZATION=f"Token {token.key}"
    )
    problem_of(response, 401)


def test_the_connectors_own_key_header_is_used(connector: Connector) -> None:
    connector.config = {"api_key_header": "X-Erp-Secret"}
    connector.save()
    problem_of(post(body()), 401)  # X-Api-Key is no longer read
    response = Client().post(URL, body(), content_type="application/json", HTTP_X_ERP_SECRET=KEY)
    assert response.status_code == 202


def test_an_unknown_disabled_or_other_kind_of_connector_is_404(connector: Connector) -> None:
    _connector("erp-json-out", direction=Direction.OUTBOUND, config={"base_url": "http://127.0.0.1:1"})
    _connector("ehr-fhir-in", protocol=Protocol.FHIR)
    for code in ("nope", "erp-json-out", "ehr-fhir-in"):
        problem_of(post(body(), url=f"/api/v1/inbound/{code}/"), 404)
    connector.is_enabled = False
    connector.save()
    problem_of(post(body()), 404)
    assert not Message.objects.exists()


def test_it_only_takes_post(connector: Connector) -> None:
    problem_of(Client().get(URL, HTTP_X_API_KEY=KEY), 405)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a read-only transaction is PostgreSQL's")
def test_it_answers_503_with_retry_after_when_the_database_cannot_commit(connector: Connector) -> None:
    # In a savepoint rolled back at the end, so that the test's own transaction becomes writable again.
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Every write from here on fails, as it would on a read-only standby after a failover.
            cursor.execute("SET TRANSACTION READ ONLY")
        for payload in (body(), json.dumps([STATUS, {**STATUS, "id": "EVT-2"}]).encode()):
            response = post(payload)
            problem = problem_of(response, 503)
            assert response["Retry-After"] == str(problem["retry_after"])
        transaction.set_rollback(True)
    assert not Message.objects.exists()
    assert post(body()).status_code == 202  # the same message, sent again once the database is back


def test_the_secret_is_never_logged_nor_stored(
    connector: Connector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    post(body())
    post(b"{not json")
    post(body(), HTTP_X_API_KEY="wrong-" + KEY)
    Client().post(URL, body(), content_type="application/json", HTTP_X_API_KEY=KEY + "x")

    assert KEY not in caplog.text
    for message in Message.objects.all():
        assert KEY not in bytes(message.raw).decode(errors="replace")
        assert KEY not in message.error and KEY not in message.sender


def test_a_message_goes_over_real_http_through_the_pipeline_to_a_canonical_event(
    live_server: Any, transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    kicks: list[int] = []
    monkeypatch.setattr(ingest, "kick_worker", lambda: kicks.append(1))
    _connector("erp-json-in")
    seed_schemas(
        {
            "ap_invoice.status_changed": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "required": ["invoice_number", "status"],
            }
        }
    )
    seed_mappings(
        [
            {
                "code": "erp-json-invoice-status",
                "name": "AP invoice status (JSON)",
                "protocol": Protocol.REST,
                "message_type": "ap_invoice_status",
                "event_type": "ap_invoice.status_changed",
                "rules": [
                    rule_spec("invoice_number", "invoice", required=True),
                    rule_spec("status", "status", required=True),
                    rule_spec("event.subject", "invoice"),
                ],
            }
        ]
    )

    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        response = http.post(
            URL, content=body(), headers={"Content-Type": "application/json", "X-Api-Key": KEY}
        )
        again = http.post(URL, content=body(), headers={"Content-Type": "application/json", "X-Api-Key": KEY})

    assert response.status_code == 202, response.text
    assert again.status_code == 200 and again.json()["message_id"] == response.json()["message_id"]
    assert kicks  # the worker is woken once the message is committed
    process_pending()
    message = Message.objects.get(pk=response.json()["message_id"])
    assert message.status == MessageStatus.PROCESSED, message.error
    event = CanonicalEvent.objects.get(message=message)
    assert event.type == "ap_invoice.status_changed" and event.subject == "INV-9"
    assert event.data == {"invoice_number": "INV-9", "status": "paid"}
    assert event.source == "erp-main" and event.source_ref == "EVT-1"
    assert CanonicalEvent.objects.count() == 1  # the resend was kept as a duplicate, never processed


def test_the_openapi_schema_documents_the_endpoint(db: None) -> None:
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    operation = schema["paths"]["/api/v1/inbound/{code}/"]["post"]
    assert {"202", "200", "207", "400", "401", "404", "413", "415", "422", "503"} <= set(
        operation["responses"]
    )
    assert "application/problem+json" in operation["responses"]["422"]["content"]
    assert {"inboundApiKey": []} in operation["security"] and {"inboundToken": []} in operation["security"]


# The console's settings for an inbound REST connector, and what the adapter checks in them.


def test_the_console_form_offers_the_inbound_settings() -> None:
    form = config_forms.get(Protocol.REST)
    assert form is not None
    inbound = {f.path for f in form.for_direction(Direction.INBOUND)}
    assert {"type_field", "id_field", "message_type", "api_key_header", "max_body_bytes"} <= inbound
    assert [f.path for f in form.secrets(Direction.INBOUND) if f.path == "inbound_api_key"]
    assert "type_field" not in {f.path for f in form.for_direction(Direction.OUTBOUND)}


def test_an_inbound_config_needs_no_base_url() -> None:
    assert RestAdapter().validate_config(Direction.INBOUND, {}) == []
    valid = {"type_field": "header.kind", "id_field": "events[1].id", "message_type": "po_receipt"}
    assert RestAdapter().validate_config(Direction.INBOUND, {**valid, "max_body_bytes": 1024}) == []


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"type_field": "lines[*].type"}, "type_field must be one JSON path"),
        ({"id_field": "a..b"}, "id_field must be one JSON path"),
        ({"message_type": "x" * 41}, "message_type must be text"),
        ({"api_key_header": "X Api Key"}, "api_key_header must be a header name"),
        ({"api_key_header": "Authorization"}, "cannot be Authorization"),
        ({"api_key_header": "Idempotency-Key"}, "must be different headers"),
        ({"max_body_bytes": 0}, "max_body_bytes must be a positive number"),
        ({"base_url": "ftp://x"}, "base_url"),
    ],
)
def test_it_rejects_bad_inbound_config(config: dict[str, Any], words: str) -> None:
    errors = RestAdapter().validate_config(Direction.INBOUND, config)
    assert any(words in e for e in errors), errors


def test_test_connection_on_an_inbound_connector_says_where_callers_post(connector: Connector) -> None:
    ok, text = RestAdapter().test_connection(connector)
    assert ok and "/api/v1/inbound/erp-json-in/" in text and "X-Api-Key" in text
    assert KEY not in text


def _console_form(system: System, **changes: Any) -> dict[str, Any]:
    return {
        "system": system.pk,
        "code": "rcm-status-in",
        "name": "RCM claim status (JSON)",
        "direction": Direction.INBOUND,
        "protocol": Protocol.REST,
        "lane": "financial",
        "is_enabled": "on",
        "config": "{}",
        "retry_max_attempts": 5,
        "retry_backoff_seconds": 2,
        "timeout_seconds": 10,
        "breaker_threshold": 5,
        **changes,
    }


def test_an_engineer_sets_up_an_inbound_connector_in_the_console_and_a_caller_delivers(
    client_for: Any, engineer: User
) -> None:
    system = System.objects.create(code="rcm-main", name="RCM", kind="rcm")
    client = client_for(engineer)
    page = client.get("/connectors/new/?protocol=rest&direction=inbound").content.decode()
    for name in (
        "cfg_type_field",
        "cfg_id_field",
        "cfg_message_type",
        "cfg_api_key_header",
        "secret_inbound_api_key",
    ):
        assert f'name="{name}"' in page

    bad = client.post("/connectors/new/", _console_form(system, cfg_type_field="claims[*].kind"))
    assert bad.status_code == 400
    assert "type_field must be one JSON path" in bad.content.decode()
    assert not Connector.objects.filter(code="rcm-status-in").exists()

    good = _console_form(
        system, cfg_message_type="claim_status", cfg_id_field="event_id", secret_inbound_api_key=KEY
    )
    assert client.post("/connectors/new/", good).status_code == 302
    connector = Connector.objects.get(code="rcm-status-in")
    assert connector.config == {"message_type": "claim_status", "id_field": "event_id"}
    assert connector.secrets == {"inbound_api_key": KEY}

    status = json.dumps({"event_id": "277-1", "claim": "CLM-1", "status": "accepted"}).encode()
    response = post(status, url="/api/v1/inbound/rcm-status-in/")
    assert response.status_code == 202
    message = Message.objects.get(pk=response.json()["message_id"])
    assert (message.message_type, message.control_id) == ("claim_status", "277-1")


def test_an_api_client_token_needs_the_inbound_write_scope(connector: Connector) -> None:
    from healthsync.api.tokens import api_client_create
    from healthsync.choices import ApiScope, SystemKind

    owner = User.objects.create_user("erp-owner")
    admin = User.objects.create_superuser("api-admin", "api-admin@example.org", "not-used-in-tests")
    partner = System.objects.create(code="erp-partner", name="ERP partner", kind=SystemKind.SAAS)

    def issue(name: str, scopes: list[str]) -> str:
        return api_client_create(
            name=name, system=partner, owner=owner, scopes=scopes, rate_limit_per_minute=100, actor=admin
        )[1]

    def bearer(payload: bytes, token: str) -> Any:  # no API key: the token alone must do
        return Client().post(
            URL, payload, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )

    reader = issue("kpi-reader", [ApiScope.KPIS_READ])
    problem_of(bearer(body(), reader), 401)
    assert not Message.objects.exists()

    writer_client_token = issue("erp-pusher", [ApiScope.INBOUND_WRITE])
    assert bearer(body(), writer_client_token).status_code == 202
    assert Message.objects.get().sender == "client:erp-pusher"

    owner.is_active = False
    owner.save()
    problem_of(bearer(body(id="INV-2"), writer_client_token), 401)
