"""Who is calling an inbound HTTP endpoint (FHIR, REST/JSON): a DRF token, or the connector's own API key.

One place for the check, so both endpoints accept the same credentials and compare secrets the same way
(in constant time, the secret never logged). The endpoints look the connector up first, because the API key
is a secret of that connector (``inbound_api_key``), sent in its ``api_key_header`` (default X-Api-Key).
"""

from __future__ import annotations

import hmac
import logging

from django.http import HttpRequest

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
