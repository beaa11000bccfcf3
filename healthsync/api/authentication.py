"""Bearer-token authentication of API clients; the browser keeps using its session."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from healthsync.api.tokens import token_digest
from healthsync.models import ApiClient


class ApiClientTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>`; the request acts as the client's owner, narrowed by its scopes."""

    keywords = (b"bearer", b"token")

    def authenticate(self, request: Request) -> tuple[Any, ApiClient] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer <token>'.")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("The token contains characters a token never has.") from None
        client = ApiClient.objects.select_related("owner").filter(token_hash=token_digest(token)).first()
        if client is None:
            raise AuthenticationFailed("Unknown or rotated token.")
        if not client.is_active or not client.owner.is_active:
            raise AuthenticationFailed("This API client has been deactivated.")
        return client.owner, client

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="healthsync"'


class ApiClientTokenScheme(OpenApiAuthenticationExtension):
    target_class = ApiClientTokenAuthentication
    name = "apiClientToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API client's token, issued once on the console's API clients page.",
        }
