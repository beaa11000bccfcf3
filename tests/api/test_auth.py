from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from healthsync.api.tokens import api_client_rotate_token, api_client_set_active, token_digest
from healthsync.models import ApiClient

pytestmark = pytest.mark.django_db

SYSTEMS = "/api/v1/systems/"


def _bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_it_accepts_a_client_token_and_acts_as_its_owner(engineer, issue_token) -> None:
    _, token = issue_token(engineer)

    response = _bearer(token).get(SYSTEMS)

    assert response.status_code == 200
    assert response.json()["count"] == 1


def test_it_stores_only_the_tokens_digest(engineer, issue_token) -> None:
    api_client, token = issue_token(engineer)

    stored = ApiClient.objects.get(pk=api_client.pk)
    assert stored.token_hash == token_digest(token)
    assert token not in (stored.token_hash, stored.token_prefix)
    assert token.startswith(stored.token_prefix)


def test_it_rejects_an_unknown_token_with_a_problem(engineer, issue_token) -> None:
    response = _bearer("hs_not-a-real-token").get(SYSTEMS)

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["status"] == 401
    assert body["title"] == "Unauthorized"
    assert "Unknown or rotated token" in body["detail"]


def test_it_rejects_a_malformed_authorization_header(engineer) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer two parts")

    response = client.get(SYSTEMS)

    assert response.status_code == 401
    assert "Malformed Authorization header" in response.json()["detail"]


def test_it_rejects_a_request_without_credentials(db) -> None:
    response = APIClient().get(SYSTEMS)

    assert response.status_code == 401
    assert response.json()["type"] == "/api/problems/not-authenticated"


def test_it_rejects_a_revoked_client(engineer, issue_token, board_member) -> None:
    api_client, token = issue_token(engineer)
    api_client_set_active(client=api_client, active=False, actor=engineer)

    response = _bearer(token).get(SYSTEMS)

    assert response.status_code == 401
    assert "deactivated" in response.json()["detail"]


def test_it_rejects_the_old_token_after_rotation(engineer, issue_token) -> None:
    api_client, old = issue_token(engineer)
    new = api_client_rotate_token(client=api_client, actor=engineer)

    assert _bearer(old).get(SYSTEMS).status_code == 401
    assert _bearer(new).get(SYSTEMS).status_code == 200


def test_it_accepts_the_browser_session(engineer, session_api_for) -> None:
    response = session_api_for(engineer).get(SYSTEMS)

    assert response.status_code == 200


def test_it_requires_the_csrf_token_for_session_writes(rcm_analyst, session_api_for) -> None:
    from tests.console_data import exception_item

    item = exception_item()

    response = session_api_for(rcm_analyst).post(
        f"/api/v1/exceptions/{item.pk}/resolve/", {"note": "done"}, format="json"
    )

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
