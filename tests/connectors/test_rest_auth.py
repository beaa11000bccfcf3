"""Outbound authentication from the connector's encrypted secrets: API key, basic, OAuth2 client credentials."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connectors.rest.adapter import RestAdapter
from connectors.rest.auth import token_cache
from connectors.simulators.fhir_server import FhirServerSimulator
from healthsync.choices import Direction, Protocol
from healthsync.errors import ConnectorError
from healthsync.models import Connector, Delivery, System
from tests.connectors.test_rest_adapter import Recorder

CLAIM = {"resourceType": "Claim", "status": "active"}


@pytest.fixture
def idp() -> Iterator[FhirServerSimulator]:
    """An API behind OAuth2: its token endpoint counts requests and tokens it issued."""
    token_cache.clear()
    with FhirServerSimulator(client_id="healthsync", client_secret="s3cret") as server:
        yield server


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as server:
        yield server


def _connector(url: str, auth: dict[str, Any], secrets: dict[str, str], **config: Any) -> Connector:
    connector = Connector(
        system=System(code="dest", name="Destination"),
        code="dest-api",
        direction=Direction.OUTBOUND,
        protocol=Protocol.REST,
        timeout_seconds=3,
        config={
            "base_url": url,
            "operations": {"create": {"method": "POST", "path": "/Claim", "result_field": "id"}},
            "auth": auth,
            **config,
        },
    )
    connector.secrets = secrets
    return connector


def _oauth(idp: FhirServerSimulator, secret: str = "s3cret", **extra: str) -> Connector:  # noqa: S107
    auth = {"type": "oauth2", "token_url": idp.url + "/oauth/token", "client_id": "healthsync", **extra}
    return _connector(idp.url, auth, {"client_secret": secret})


def _send(connector: Connector, key: str = "k-1") -> Any:
    return RestAdapter().send(connector, Delivery(operation="create", idempotency_key=key, payload=CLAIM))


def test_the_api_key_comes_from_the_encrypted_secrets(recorder: Recorder) -> None:
    connector = _connector(recorder.url, {"type": "api_key", "header": "X-Api-Key"}, {"api_key": "k3y"})
    assert "k3y" not in connector.secrets_token
    _send(connector)
    assert recorder.seen[0][2]["x-api-key"] == "k3y"


def test_basic_auth_takes_the_password_from_the_secrets(recorder: Recorder) -> None:
    _send(_connector(recorder.url, {"type": "basic", "username": "u"}, {"password": "p"}))
    assert recorder.seen[0][2]["authorization"] == "Basic dTpw"


def test_the_idempotency_header_name_is_configurable(recorder: Recorder) -> None:
    connector = _connector(
        recorder.url,
        {"type": "api_key", "header": "X-Api-Key"},
        {"api_key": "k"},
        idempotency_header="X-Request-Id",
    )
    _send(connector, key="claim:V1:1")
    assert recorder.seen[0][2]["x-request-id"] == "claim:V1:1"


def test_a_missing_secret_is_a_permanent_error_that_names_it(recorder: Recorder) -> None:
    with pytest.raises(ConnectorError) as caught:
        _send(_connector(recorder.url, {"type": "basic", "username": "u"}, {}))
    assert caught.value.permanent and "no password is set" in caught.value.message
    assert not recorder.seen


def test_oauth2_fetches_one_token_and_reuses_it(idp: FhirServerSimulator) -> None:
    connector = _oauth(idp)
    first, second = _send(connector, "k-1"), _send(connector, "k-2")
    assert first.external_id and second.external_id
    assert idp.token_requests == 1
    assert idp.count("Claim") == 2


def test_oauth2_client_auth_can_be_http_basic(idp: FhirServerSimulator) -> None:
    _send(_oauth(idp, client_auth="basic"))
    assert idp.token_requests == 1 and idp.count("Claim") == 1


def test_an_expired_token_is_fetched_again(idp: FhirServerSimulator) -> None:
    idp.token_lifetime = 0  # already within the refresh margin when it arrives
    connector = _oauth(idp)
    _send(connector, "k-1")
    _send(connector, "k-2")
    assert idp.token_requests == 2


def test_a_401_drops_the_token_and_retries_once_with_a_fresh_one(idp: FhirServerSimulator) -> None:
    connector = _oauth(idp)
    _send(connector, "k-1")
    idp.revoke_tokens()
    result = _send(connector, "k-2")
    assert result.external_id
    assert idp.token_requests == 2
    assert idp.requests["POST /Claim"] == 3  # one refused, then the retry


def test_a_401_after_a_fresh_token_is_permanent_and_not_retried_again(
    idp: FhirServerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector = _oauth(idp)
    # The API refuses every token (a scope problem, say): exactly one re-fetch, then the problem.
    monkeypatch.setattr(idp, "_authorized", lambda headers: False)
    with pytest.raises(ConnectorError) as caught:
        _send(connector)
    assert caught.value.permanent and caught.value.message.startswith("HTTP 401")
    assert idp.token_requests == 2 and idp.requests["POST /Claim"] == 2


def test_wrong_client_credentials_are_a_permanent_error_without_the_secret(idp: FhirServerSimulator) -> None:
    with pytest.raises(ConnectorError) as caught:
        _send(_oauth(idp, secret="wrong-secret"))
    assert caught.value.permanent
    assert "invalid_client" in caught.value.message or "unknown client" in caught.value.message
    assert "wrong-secret" not in caught.value.message
    assert idp.requests["POST /Claim"] == 0


def test_a_new_secret_does_not_reuse_the_old_token(idp: FhirServerSimulator) -> None:
    _send(_oauth(idp))
    idp.client_secret = "rotated"
    _send(_oauth(idp, secret="rotated"))
    assert idp.token_requests == 2


def test_an_unreachable_token_endpoint_is_transient() -> None:
    token_cache.clear()
    with FhirServerSimulator() as gone:
        url = gone.url
    connector = _connector(
        url, {"type": "oauth2", "token_url": url + "/oauth/token", "client_id": "c"}, {"client_secret": "s"}
    )
    with pytest.raises(ConnectorError) as caught:
        _send(connector)
    assert not caught.value.permanent and "token endpoint is unreachable" in caught.value.message


def test_a_nested_result_field_is_mapped_back(recorder: Recorder) -> None:
    recorder.reply = (201, {"data": {"claim": {"id": "CLM-9"}}})
    connector = _connector(recorder.url, {"type": "api_key", "header": "X-Api-Key"}, {"api_key": "k"})
    connector.config["operations"]["create"]["result_field"] = "data.claim.id"
    result = _send(connector)
    assert result.external_id == "CLM-9"
    assert result.response == {"data": {"claim": {"id": "CLM-9"}}}


def test_test_connection_reports_refused_credentials(idp: FhirServerSimulator) -> None:
    ok, detail = RestAdapter().test_connection(_oauth(idp, secret="nope"))
    assert not ok and "refused" in detail
    ok, detail = RestAdapter().test_connection(_oauth(idp))
    assert ok, detail


@pytest.mark.parametrize(
    ("auth", "error"),
    [
        ({"type": "oauth2", "client_id": "c"}, "token_url"),
        ({"type": "oauth2", "token_url": "https://idp/token"}, "client_id"),
        (
            {"type": "oauth2", "token_url": "https://idp/token", "client_id": "c", "client_auth": "jwt"},
            "client_auth",
        ),
        ({"type": "basic"}, "username"),
    ],
)
def test_it_rejects_incomplete_auth_config(auth: dict, error: str) -> None:
    config = {
        "base_url": "http://x",
        "operations": {"a": {"method": "POST", "path": "/a", "result_field": "i"}},
    }
    errors = RestAdapter().validate_config(Direction.OUTBOUND, {**config, "auth": auth})
    assert any(error in e for e in errors), errors
