"""Scopes, rate limits and the usage rollup of API clients."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError

from healthsync.api.tokens import api_client_create
from healthsync.models import ApiUsage
from tests.console_data import exception_item, message

pytestmark = pytest.mark.django_db


def test_it_refuses_an_endpoint_outside_the_clients_scopes(engineer, api_for) -> None:
    client = api_for(engineer, scopes=["systems:read"])

    response = client.get("/api/v1/messages/")

    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == "This API client lacks the messages:read scope."


def test_it_needs_the_write_scope_for_actions(rcm_analyst, api_for) -> None:
    item = exception_item()
    client = api_for(rcm_analyst, scopes=["exceptions:read"])

    response = client.post(
        f"/api/v1/exceptions/{item.pk}/resolve/", {"note": "Fixed upstream."}, format="json"
    )

    assert response.status_code == 403
    assert "exceptions:write" in response.json()["detail"]
    item.refresh_from_db()
    assert item.status == "open"


def test_a_scope_never_widens_the_owners_role(executive, api_for) -> None:
    message()
    client = api_for(executive, scopes=["messages:read", "kpis:read"])

    assert client.get("/api/v1/messages/").status_code == 403
    assert client.get("/api/v1/kpis/").status_code == 200


def test_it_answers_429_with_retry_after_once_the_rate_limit_is_used_up(engineer, api_for) -> None:
    client = api_for(engineer, rate_limit=2)

    statuses = [client.get("/api/v1/systems/").status_code for _ in range(3)]

    assert statuses[:2] == [200, 200]
    assert statuses[2] == 429
    response = client.get("/api/v1/systems/")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/problem+json"
    assert 1 <= int(response["Retry-After"]) <= 60
    body = response.json()
    assert body["status"] == 429
    assert body["retry_after"] == int(response["Retry-After"])


def test_it_records_calls_errors_and_latency_per_client_and_minute(engineer, issue_token) -> None:
    from rest_framework.test import APIClient

    api_client, token = issue_token(engineer)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    client.get("/api/v1/systems/")
    client.get("/api/v1/systems/999999/")
    client.get("/api/v1/messages/?received_after=not-a-date")

    usage = ApiUsage.objects.get(client=api_client)
    assert (usage.calls, usage.errors) == (3, 2)
    assert usage.latency_ms_total > 0
    assert usage.latency_ms_max > 0
    assert usage.minute.second == 0
    api_client.refresh_from_db()
    assert api_client.last_used_at is not None


def test_it_counts_refused_calls_too(executive, issue_token) -> None:
    from rest_framework.test import APIClient

    api_client, token = issue_token(executive, scopes=["kpis:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    client.get("/api/v1/messages/")

    usage = ApiUsage.objects.get(client=api_client)
    assert (usage.calls, usage.errors) == (1, 1)


def test_it_refuses_unknown_scopes_and_bad_limits(engineer, system) -> None:
    with pytest.raises(ValidationError, match="Unknown scopes: messages:delete"):
        api_client_create(
            name="x",
            system=system,
            owner=engineer,
            scopes=["messages:delete"],
            rate_limit_per_minute=5,
            actor=engineer,
        )
    with pytest.raises(ValidationError, match="between 1 and"):
        api_client_create(
            name="x", system=system, owner=engineer, scopes=[], rate_limit_per_minute=0, actor=engineer
        )


def test_only_roles_allowed_to_may_register_clients(rcm_analyst, system) -> None:
    with pytest.raises(PermissionDenied):
        api_client_create(
            name="x", system=system, owner=rcm_analyst, scopes=[], rate_limit_per_minute=5, actor=rcm_analyst
        )
    assert not User.objects.filter(api_clients__name="x").exists()
