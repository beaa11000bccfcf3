"""The REST adapter against real local HTTP servers: headers, auth, and how each answer is classified."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connectors.rest.adapter import RestAdapter
from connectors.simulators.erp import ErpSimulator
from connectors.simulators.http_base import JsonSimulator, Reply
from connectors.simulators.rcm import RcmSimulator
from healthsync.choices import Direction
from healthsync.errors import ConnectorError
from healthsync.models import Connector, Delivery, System


class Recorder(JsonSimulator):
    """Answers with whatever the test scripts and remembers what it was sent."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0)
        self.reply: Reply = (201, {"id": "X-1"})
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        self.seen.append((method, path, headers, body))
        return self.reply


@pytest.fixture
def server() -> Iterator[Recorder]:
    with Recorder() as recorder:
        yield recorder


def _connector(url: str, **config: Any) -> Connector:
    # Unsaved rows: the adapter reads attributes only, so these tests need no database.
    return Connector(
        system=System(code="dest", name="Destination"),
        code="dest-api",
        direction=Direction.OUTBOUND,
        protocol="rest",
        timeout_seconds=2,
        config={
            "base_url": url,
            "operations": {"create": {"method": "POST", "path": "/things", "result_field": "id"}},
            **config,
        },
    )


def _delivery(**kw: Any) -> Delivery:
    return Delivery(operation="create", idempotency_key="src:thing:1:1", payload={"a": 1}, **kw)


def test_it_posts_the_payload_with_the_idempotency_key(server: Recorder) -> None:
    result = RestAdapter().send(_connector(server.url + "/api/"), _delivery())
    assert result.external_id == "X-1"
    assert result.response == {"id": "X-1"}
    method, path, headers, body = server.seen[0]
    assert (method, path, body) == ("POST", "/api/things", {"a": 1})
    assert headers["idempotency-key"] == "src:thing:1:1"
    assert headers["content-type"] == "application/json"


def test_it_sends_the_configured_header_name_api_key_and_extra_headers(server: Recorder) -> None:
    connector = _connector(
        server.url,
        idempotency_header="X-Request-Id",
        auth={"type": "api_key", "header": "X-Api-Key", "value": "k3y"},
        headers={"X-Tenant": "north"},
    )
    RestAdapter().send(connector, _delivery())
    headers = server.seen[0][2]
    assert headers["x-request-id"] == "src:thing:1:1"
    assert headers["x-api-key"] == "k3y"
    assert headers["x-tenant"] == "north"


def test_it_sends_basic_auth(server: Recorder) -> None:
    connector = _connector(server.url, auth={"type": "basic", "username": "u", "password": "p"})
    RestAdapter().send(connector, _delivery())
    assert server.seen[0][2]["authorization"] == "Basic dTpw"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_client_error_is_permanent_and_carries_the_problem_text(server: Recorder, status: int) -> None:
    server.reply = (status, {"title": "Invalid claim", "detail": "payer.id is missing"})
    with pytest.raises(ConnectorError) as caught:
        RestAdapter().send(_connector(server.url), _delivery())
    assert caught.value.permanent
    assert caught.value.message == f"HTTP {status}: Invalid claim: payer.id is missing"
    assert caught.value.response == {"title": "Invalid claim", "detail": "payer.id is missing"}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_server_errors_timeouts_and_throttling_are_transient(server: Recorder, status: int) -> None:
    server.reply = (status, {"detail": "busy"})
    with pytest.raises(ConnectorError) as caught:
        RestAdapter().send(_connector(server.url), _delivery())
    assert not caught.value.permanent
    assert "busy" in caught.value.message


def test_a_conflict_naming_the_existing_result_is_success(server: Recorder) -> None:
    server.reply = (409, {"detail": "duplicate external reference", "id": "X-0"})
    assert RestAdapter().send(_connector(server.url), _delivery()).external_id == "X-0"


def test_a_conflict_without_a_result_is_permanent(server: Recorder) -> None:
    server.reply = (409, {"detail": "conflict"})
    with pytest.raises(ConnectorError) as caught:
        RestAdapter().send(_connector(server.url), _delivery())
    assert caught.value.permanent


def test_a_refused_connection_is_transient() -> None:
    recorder = Recorder().start()
    url = recorder.url
    recorder.stop()
    with pytest.raises(ConnectorError) as caught:
        RestAdapter().send(_connector(url), _delivery())
    assert not caught.value.permanent
    assert "unreachable" in caught.value.message


def test_an_unknown_operation_is_permanent(server: Recorder) -> None:
    with pytest.raises(ConnectorError) as caught:
        RestAdapter().send(
            _connector(server.url), Delivery(operation="nope", idempotency_key="k", payload={})
        )
    assert caught.value.permanent
    assert server.seen == []


def test_the_rcm_simulator_dedupes_through_the_adapter() -> None:
    with RcmSimulator() as rcm:
        connector = _connector(
            rcm.url,
            operations={"submit_claim": {"method": "POST", "path": "/claims", "result_field": "claim_id"}},
        )
        claim = {
            "patient_control_number": "V1",
            "payer": {"id": "P"},
            "diagnoses": [{"code": "I10"}],
            "total_charges": "1",
        }
        delivery = Delivery(operation="submit_claim", idempotency_key="k-1", payload=claim)
        first = RestAdapter().send(connector, delivery)
        second = RestAdapter().send(connector, delivery)
    assert first.external_id == second.external_id == "CLM-000001"
    assert rcm.claim_count == 1 and rcm.requests["POST /claims"] == 2


def test_a_valid_config_has_no_errors() -> None:
    config = _connector("https://rcm.example.org/api").config
    assert RestAdapter().validate_config(Direction.OUTBOUND, config) == []


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {
                "base_url": "ftp://x",
                "operations": {"a": {"method": "POST", "path": "/a", "result_field": "id"}},
            },
            "base_url",
        ),
        (
            {
                "base_url": "http://",
                "operations": {"a": {"method": "POST", "path": "/a", "result_field": "id"}},
            },
            "base_url",
        ),
        ({"base_url": "http://x"}, "operations must map"),
        ({"base_url": "http://x", "operations": {"a": "POST /a"}}, "operation a: must be an object"),
        (
            {
                "base_url": "http://x",
                "operations": {"a": {"method": "DELETE", "path": "/a", "result_field": "id"}},
            },
            "method",
        ),
        (
            {
                "base_url": "http://x",
                "operations": {"a": {"method": "POST", "path": "a", "result_field": "id"}},
            },
            "path",
        ),
        ({"base_url": "http://x", "operations": {"a": {"method": "POST", "path": "/a"}}}, "result_field"),
        (
            {
                "base_url": "http://x",
                "operations": {"a": {"method": "POST", "path": "/a", "result_field": "i"}},
                "auth": {"type": "oauth"},
            },
            "auth.type",
        ),
        (
            {
                "base_url": "http://x",
                "operations": {"a": {"method": "POST", "path": "/a", "result_field": "i"}},
                "auth": {"type": "api_key"},
            },
            "api_key auth",
        ),
    ],
)
def test_it_rejects_bad_config(config: dict, error: str) -> None:
    errors = RestAdapter().validate_config(Direction.OUTBOUND, config)
    assert any(error in e for e in errors), errors


def test_the_rcm_simulator_answers_a_bad_claim_with_a_problem() -> None:
    with RcmSimulator() as rcm:
        response = httpx.post(rcm.url + "/claims", json={"patient_control_number": "V1"})
        listed = httpx.get(rcm.url + "/claims").json()
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == ["payer.id", "diagnoses", "total_charges"]
    assert listed == {"claims": []}


def test_the_erp_simulator_refuses_unbalanced_and_duplicate_entries() -> None:
    entry = {
        "external_reference": "r1",
        "lines": [{"account": "1", "debit": "5"}, {"account": "2", "credit": "5"}],
    }
    with ErpSimulator() as erp:
        unbalanced = httpx.post(
            erp.url + "/journal-entries",
            json={**entry, "lines": [{"account": "1", "debit": "5"}, {"account": "2", "credit": "4"}]},
        )
        first = httpx.post(erp.url + "/journal-entries", json=entry)
        again = httpx.post(erp.url + "/journal-entries", json=entry)
        not_json = httpx.post(
            erp.url + "/journal-entries", content=b"{", headers={"Content-Type": "application/json"}
        )
    assert unbalanced.status_code == 400 and "does not balance" in unbalanced.json()["detail"]
    assert first.status_code == 201 and first.json()["document_number"].startswith("JE-")
    assert again.status_code == 409
    assert again.json() == {
        "detail": "duplicate external reference",
        "document_number": first.json()["document_number"],
    }
    assert not_json.status_code == 400
    assert erp.entry_count == 1 and erp.requests["POST /journal-entries"] == 4
