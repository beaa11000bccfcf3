"""API clients: issuing, rotating and revoking their tokens. A token is shown once and stored as a digest."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from healthsync.audit import acting_as
from healthsync.choices import ApiScope
from healthsync.models import ApiClient, System

if TYPE_CHECKING:
    from django.contrib.auth.models import User

TOKEN_PREFIX = "hs_"  # noqa: S105 (a marker that makes leaked tokens greppable, not a secret)
MAX_RATE_LIMIT = 100_000


def token_digest(token: str) -> str:
    # Tokens carry 256 random bits, so a fast digest is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _clean_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(ApiScope.values))
    if unknown:
        raise ValidationError({"scopes": f"Unknown scopes: {', '.join(unknown)}"})
    return sorted(set(scopes))


def _clean_rate_limit(rate_limit_per_minute: int) -> int:
    if not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT:
        raise ValidationError(
            {
                "rate_limit_per_minute": f"The rate limit must be between 1 and {MAX_RATE_LIMIT} calls a minute."
            }
        )
    return rate_limit_per_minute


@transaction.atomic
def api_client_create(
    *,
    name: str,
    system: System,
    owner: User,
    scopes: list[str],
    rate_limit_per_minute: int,
    actor: User,
) -> tuple[ApiClient, str]:
    """Register a consuming system and issue its token; the plain token is returned here and never again."""
    if not actor.has_perm("healthsync.add_apiclient"):
        raise PermissionDenied("You are not allowed to register API clients.")
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the API client a name."})
    if ApiClient.objects.filter(name=name).exists():
        raise ValidationError({"name": "An API client with this name exists."})
    token = _new_token()
    with acting_as(actor):
        client = ApiClient.objects.create(
            name=name,
            system=system,
            owner=owner,
            scopes=_clean_scopes(scopes),
            rate_limit_per_minute=_clean_rate_limit(rate_limit_per_minute),
            token_prefix=token[:10],
            token_hash=token_digest(token),
        )
    return client, token


@transaction.atomic
def api_client_rotate_token(*, client: ApiClient, actor: User) -> str:
    """Issue a new token; the old one stops working at once."""
    if not actor.has_perm("healthsync.change_apiclient"):
        raise PermissionDenied("You are not allowed to change API clients.")
    token = _new_token()
    with acting_as(actor):
        client = ApiClient.objects.select_for_update().get(pk=client.pk)
        client.token_prefix = token[:10]
        client.token_hash = token_digest(token)
        client.save(update_fields=["token_prefix", "token_hash"])
    return token


@transaction.atomic
def api_client_set_active(*, client: ApiClient, active: bool, actor: User) -> ApiClient:
    """Revoke (or restore) a client's access without losing its usage history."""
    if not actor.has_perm("healthsync.change_apiclient"):
        raise PermissionDenied("You are not allowed to change API clients.")
    with acting_as(actor):
        client = ApiClient.objects.select_for_update().get(pk=client.pk)
        client.is_active = active
        client.save(update_fields=["is_active"])
    return client
