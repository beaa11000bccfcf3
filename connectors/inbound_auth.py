"""Who is calling an inbound HTTP endpoint (FHIR, REST/JSON): a DRF token, or the connector's own API key.

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
    """Who is calling ("token:<username>" or "api-key"), or "" when the credentials do not check out.

    The caller, not the peer address, is the message's sender: a retry through another proxy node must
    still be recognised as the same message. `endpoint` only names the endpoint in the log.
    """
    header = request.headers.get("Authorization", "")
    if header.startswith("Token "):
        from rest_framework.authtoken.models import Token

        token = Token.objects.select_related("user").filter(key=header[6:].strip()).first()
        if token is None or not token.user.is_active:
            return ""
        return f"token:{token.user.get_username()}"
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
                "description": 'A Django REST framework token, with the prefix "Token ".',
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
