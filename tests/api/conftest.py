"""API fixtures: a system, API clients with tokens, and DRF test clients authenticated either way."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from healthsync.api.tokens import api_client_create
from healthsync.choices import ApiScope, SystemKind
from healthsync.models import ApiClient, System

ALL_SCOPES = list(ApiScope.values)


@pytest.fixture
def system(db: None) -> System:
    return System.objects.create(code="billing-bot", name="Billing bot", kind=SystemKind.SAAS)


@pytest.fixture
def issue_token(system: System) -> Callable[..., tuple[ApiClient, str]]:
    """Register an API client owned by `owner` and return it with its plain token."""

    def issue(
        owner: User, scopes: list[str] | None = None, rate_limit: int = 1000, name: str = ""
    ) -> tuple[ApiClient, str]:
        actor = User.objects.filter(is_superuser=True).first() or User.objects.create_superuser(
            "api-admin", "api-admin@example.org", "not-used-in-tests"
        )
        return api_client_create(
            name=name or f"{owner.username}-client-{ApiClient.objects.count()}",
            system=system,
            owner=owner,
            scopes=ALL_SCOPES if scopes is None else scopes,
            rate_limit_per_minute=rate_limit,
            actor=actor,
        )

    return issue


@pytest.fixture
def api_for(issue_token: Callable[..., tuple[ApiClient, str]]) -> Callable[..., APIClient]:
    """A DRF test client sending the bearer token of a fresh API client owned by `owner`."""

    def make(owner: User, scopes: list[str] | None = None, rate_limit: int = 1000) -> APIClient:
        _, token = issue_token(owner, scopes, rate_limit)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return make


@pytest.fixture
def session_api_for() -> Callable[[User], APIClient]:
    """A DRF test client signed in with a browser session."""

    def make(user: User) -> APIClient:
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(user)
        return client

    return make
