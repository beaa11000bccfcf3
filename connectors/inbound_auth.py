"""Who is calling an inbound HTTP endpoint (FHIR, REST/JSON): an API client's token with the inbound:write
scope, a DRF token, or the connector's own API key.

One place for the check, so both endpoints accept the same credentials and compare secrets the same way
(in constant time, the secret never logged). The endpoints look the connector up first, because the API key
is a secret of that connector (``inbound_api_key``), sent in its ``api_key_header`` (default X-Api-Key).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from healthsync.models import Connector
from healthsync.secrets import SecretsUnreadable

logger = logging.getLogger(__name__)

DEFAULT_KEY_HEADER = "X-Api-Key"
SECRET_NAME = "inbound_api_key"  # noqa: S105 (the name of the secret, not a secret)


def key_header_for(connector: Connector) -> str:
    return str((connector.config or {}).get("api_key_header") or DEFAULT_KEY_HEADER)


def caller(request: HttpRequest, connector: Connector, *, endpoint: str = "inbound") -> str:
    """Who is calling ("client:<name>", "token:<username>" or "api-key"), or "" when the credentials fail.

    The caller, not the peer address, is the message's sender: a retry through another proxy node must
    still be recognised as the same message. `endpoint` only names the endpoint in the log.
    """
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    credential = credential.strip()
    if scheme.lower() in ("bearer", "token") and credential:
        return _token_caller(scheme, credential)
    offered = request.headers.get(key_header_for(connector), "")
    if not offered:
        return ""
    try:
        expected = connector.secrets.get(SECRET_NAME, "")
    except SecretsUnreadable:
        logger.error("%s: secrets of connector %s cannot be decrypted", endpoint, connector.pk)
        return ""
    if expected and hmac.compare_digest(offered.encode(), expected.encode()):
        return "api-key"
    return ""


def _token_caller(scheme: str, credential: str) -> str:
    """An API client's token with the inbound:write scope ("client:<name>"), else a DRF token ("token:<user>").

    API clients are issued on the console's API clients page, each narrowed to its scopes: a client made to
    read KPIs cannot deliver messages. A DRF token is an administrator's deliberate grant to a service user.
    """
    from healthsync.api.tokens import token_digest
    from healthsync.choices import ApiScope
    from healthsync.models import ApiClient

    client = ApiClient.objects.select_related("owner").filter(token_hash=token_digest(credential)).first()
    if client is not None:
        allowed = client.is_active and client.owner.is_active and client.has_scope(ApiScope.INBOUND_WRITE)
        return f"client:{client.name}" if allowed else ""
    if scheme != "Token":
        return ""
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=credential).first()
    if token is None or not token.user.is_active:
        return ""
    return f"token:{token.user.get_username()}"


class InboundCredentials(BaseAuthentication):
    """Names the inbound credentials for DRF views and their OpenAPI schema; the check itself is `caller`.

    It cannot run as DRF authentication: the API key is a secret of the connector named in the path, and an
    unknown connector must answer 404 before any credentials are looked at.
    """

    def authenticate(self, request: Request) -> None:
        return None

    def authenticate_header(self, request: Request) -> str:
        return "Token"


class InboundCredentialsScheme(OpenApiAuthenticationExtension):
    target_class = InboundCredentials
    name = ["inboundToken", "inboundApiKey"]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, str]]:
        return [
            {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": 'An API client token with the inbound:write scope ("Bearer <token>"), or a '
                'Django REST framework token ("Token <key>").',
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": DEFAULT_KEY_HEADER,
                "description": f"The connector's secret {SECRET_NAME}, in its api_key_header "
                f"(default {DEFAULT_KEY_HEADER}).",
            },
        ]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[str]]]:
        return [{"inboundToken": []}, {"inboundApiKey": []}]
