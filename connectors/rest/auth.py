"""Outbound HTTP authentication shared by the REST and FHIR adapters: API key, basic, OAuth2 client credentials.

The non-secret half lives in ``config["auth"]``; the secret half in the connector's encrypted secrets, read at
send time (healthsync/secrets.py)::

    {"type": "api_key", "header": "X-Api-Key"}                              secrets: {"api_key": "…"}
    {"type": "basic", "username": "healthsync"}                             secrets: {"password": "…"}
    {"type": "oauth2", "token_url": "https://idp/token", "client_id": "hs",
     "scope": "claims.write", "client_auth": "body" | "basic"}             secrets: {"client_secret": "…"}

Older configs that kept ``value``/``password`` in the config still work; the console moves them into the
secrets on the next save. OAuth2 tokens are cached per process until shortly before they expire; a 401 from
the API drops the cached token and the request is sent once more with a fresh one.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx

from healthsync.errors import ConnectorError
from healthsync.secrets import SecretsUnreadable

if TYPE_CHECKING:
    from healthsync.models import Connector

AUTH_TYPES = ("api_key", "basic", "oauth2")
# Which secret each auth type needs: the console renders one password input per name.
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "api_key": ("api_key",),
    "basic": ("password",),
    "oauth2": ("client_secret",),
}
# Refresh this long before the token's stated expiry, so a request never leaves with a token about to lapse.
EXPIRY_SKEW_SECONDS = 30.0
DEFAULT_TOKEN_LIFETIME = 300.0


def validate_auth(auth: Any) -> list[str]:
    """Errors in an ``auth`` config block (None means no authentication)."""
    if auth is None:
        return []
    if not isinstance(auth, dict) or auth.get("type") not in AUTH_TYPES:
        return ["auth.type must be api_key, basic or oauth2"]
    kind = auth["type"]
    if kind == "api_key" and not auth.get("header"):
        return ["api_key auth needs the header name (the key itself is a secret)"]
    if kind == "basic" and not auth.get("username"):
        return ["basic auth needs a username (the password is a secret)"]
    if kind == "oauth2":
        errors = []
        parsed = urlparse(str(auth.get("token_url") or ""))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            errors.append("oauth2 auth needs token_url, an http:// or https:// URL")
        if not auth.get("client_id"):
            errors.append("oauth2 auth needs client_id (the client secret is a secret)")
        if auth.get("client_auth", "body") not in ("body", "basic"):
            errors.append("oauth2 client_auth must be body or basic")
        return errors
    return []


def _secret(connector: Connector, auth: dict[str, Any], name: str, legacy: str) -> str:
    try:
        value = connector.secrets.get(name) or ""
    except SecretsUnreadable as exc:
        raise ConnectorError(f"{connector.code}: {exc}", permanent=True) from None
    value = value or str(auth.get(legacy) or "")
    if not value:
        raise ConnectorError(
            f"{connector.code}: {auth.get('type')} auth is configured but no {name} is set", permanent=True
        )
    return value


@dataclass
class _Token:
    value: str
    expires_at: float  # time.monotonic()


class TokenCache:
    """OAuth2 access tokens per (token URL, client id, secret), shared by the threads of one process."""

    def __init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(token_url: str, client_id: str, secret: str, scope: str) -> str:
        # The secret takes part so that a new secret never reuses a token fetched with the old one.
        digest = hashlib.sha256(secret.encode()).hexdigest()[:16]
        return f"{token_url}|{client_id}|{scope}|{digest}"

    def get(self, key: str) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None or token.expires_at <= time.monotonic():
                return None
            return token.value

    def put(self, key: str, value: str, lifetime: float) -> None:
        with self._lock:
            self._tokens[key] = _Token(value, time.monotonic() + max(lifetime - EXPIRY_SKEW_SECONDS, 0.0))

    def drop(self, key: str) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


token_cache = TokenCache()


@dataclass(frozen=True)
class _OAuth2:
    token_url: str
    client_id: str
    client_secret: str
    scope: str
    client_auth: str

    @property
    def cache_key(self) -> str:
        return TokenCache.key(self.token_url, self.client_id, self.client_secret, self.scope)


def _fetch_token(connector: Connector, spec: _OAuth2) -> str:
    data = {"grant_type": "client_credentials"}
    if spec.scope:
        data["scope"] = spec.scope
    auth: httpx.Auth | None = None
    if spec.client_auth == "basic":
        auth = httpx.BasicAuth(spec.client_id, spec.client_secret)
    else:
        data.update(client_id=spec.client_id, client_secret=spec.client_secret)
    try:
        response = httpx.post(
            spec.token_url,
            data=data,
            auth=auth,
            headers={"Accept": "application/json"},
            timeout=connector.timeout_seconds,
        )
    except httpx.HTTPError as exc:
        raise ConnectorError(
            f"{connector.code}: token endpoint is unreachable: {type(exc).__name__}"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise ConnectorError(f"{connector.code}: token endpoint answered HTTP {response.status_code}")
    if not response.is_success or not body.get("access_token"):
        # RFC 6749 §5.2 error codes (invalid_client, invalid_scope) are safe to show; the secret is not in them.
        reason = body.get("error_description") or body.get("error") or "no access_token in the reply"
        raise ConnectorError(
            f"{connector.code}: token endpoint refused the client credentials: "
            f"HTTP {response.status_code} {reason}",
            permanent=True,
        )
    try:
        stated = body.get("expires_in")
        lifetime = DEFAULT_TOKEN_LIFETIME if stated in (None, "") else float(stated)
    except (TypeError, ValueError):
        lifetime = DEFAULT_TOKEN_LIFETIME
    token = str(body["access_token"])
    token_cache.put(spec.cache_key, token, lifetime)
    return token


def _bearer(connector: Connector, spec: _OAuth2, *, fresh: bool = False) -> str:
    if fresh:
        token_cache.drop(spec.cache_key)
    cached = token_cache.get(spec.cache_key)
    return cached if cached is not None else _fetch_token(connector, spec)


def request(
    connector: Connector,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send one HTTP request with the connector's authentication; transport errors become ConnectorError.

    With OAuth2 a 401 answer drops the cached token and the request goes once more with a fresh token.
    """
    config = connector.config or {}
    auth_config = config.get("auth") or {}
    headers = dict(headers or {})
    auth: httpx.Auth | None = None
    oauth: _OAuth2 | None = None
    kind = auth_config.get("type") if isinstance(auth_config, dict) else None
    if kind == "api_key":
        headers[str(auth_config["header"])] = _secret(connector, auth_config, "api_key", "value")
    elif kind == "basic":
        password = _secret(connector, auth_config, "password", "password")
        auth = httpx.BasicAuth(str(auth_config["username"]), password)
    elif kind == "oauth2":
        oauth = _OAuth2(
            token_url=str(auth_config.get("token_url", "")),
            client_id=str(auth_config.get("client_id", "")),
            client_secret=_secret(connector, auth_config, "client_secret", "client_secret"),
            scope=str(auth_config.get("scope") or ""),
            client_auth=str(auth_config.get("client_auth") or "body"),
        )
        headers["Authorization"] = f"Bearer {_bearer(connector, oauth)}"
    kwargs.setdefault("timeout", connector.timeout_seconds)
    response = _send(connector, method, url, headers=headers, auth=auth, **kwargs)
    if oauth is not None and response.status_code == 401:
        headers["Authorization"] = f"Bearer {_bearer(connector, oauth, fresh=True)}"
        response = _send(connector, method, url, headers=headers, auth=auth, **kwargs)
    return response


def _send(connector: Connector, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return httpx.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise ConnectorError(
            f"{connector.code} did not answer within {connector.timeout_seconds:g}s"
        ) from None
    except httpx.HTTPError as exc:
        raise ConnectorError(f"{connector.code} is unreachable: {type(exc).__name__}") from None
