"""The /api-clients/ console page: who may see it, registering a client shows its token once."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from healthsync.models import ApiClient, ApiUsage

pytestmark = pytest.mark.django_db


def _register(client, system, owner) -> str:
    response = client.post(
        "/api-clients/",
        {
            "name": "Billing bot",
            "system": system.pk,
            "owner": owner.pk,
            "scopes": ["kpis:read", "exceptions:read"],
            "rate_limit_per_minute": 60,
        },
    )
    assert response.status_code == 200
    match = re.search(r'<code id="new-token">([^<]+)</code>', response.content.decode())
    assert match
    return match.group(1)


def test_integration_engineers_open_the_page_and_outsiders_do_not(engineer, rcm_analyst, client_for) -> None:
    assert client_for(engineer).get("/api-clients/").status_code == 200
    assert client_for(rcm_analyst).get("/api-clients/").status_code == 403


def test_registering_a_client_shows_a_working_token_once(engineer, executive, system, client_for) -> None:
    console = client_for(engineer)

    token = _register(console, system, executive)

    stored = ApiClient.objects.get(name="Billing bot")
    assert stored.scopes == ["exceptions:read", "kpis:read"]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/kpis/").status_code == 200
    page = console.get("/api-clients/").content.decode()
    assert token not in page
    assert "Billing bot" in page


def test_the_page_shows_usage_per_client(engineer, executive, system, client_for) -> None:
    console = client_for(engineer)
    token = _register(console, system, executive)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    api.get("/api/v1/kpis/")
    api.get("/api/v1/messages/")

    page = console.get("/api-clients/").content.decode()

    usage = ApiUsage.objects.get()
    assert (usage.calls, usage.errors) == (2, 1)
    assert "2 / 2" in page and "1 / 1" in page


def test_a_bad_registration_is_refused_with_the_reason(engineer, system, client_for) -> None:
    response = client_for(engineer).post(
        "/api-clients/",
        {
            "name": "x",
            "system": system.pk,
            "owner": engineer.pk,
            "scopes": ["root"],
            "rate_limit_per_minute": 0,
        },
    )

    assert response.status_code == 400
    assert not ApiClient.objects.exists()
    assert "root is not one of the available choices" in response.content.decode()


def test_rotating_and_revoking_from_the_console(engineer, executive, system, client_for) -> None:
    console = client_for(engineer)
    old = _register(console, system, executive)
    stored = ApiClient.objects.get()

    rotated = console.post(f"/api-clients/{stored.pk}/rotate/")
    new = re.search(r'<code id="new-token">([^<]+)</code>', rotated.content.decode()).group(1)
    console.post(f"/api-clients/{stored.pk}/deactivate/")

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {old}")
    assert api.get("/api/v1/kpis/").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {new}")
    assert api.get("/api/v1/kpis/").json()["detail"] == "This API client has been deactivated."
