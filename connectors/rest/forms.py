"""The REST connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from healthsync.choices import Direction, Protocol
from healthsync.forms import ConfigField, ConfigForm

OUT = Direction.OUTBOUND

# Shared with the FHIR client, which authenticates the same way (connectors/rest/auth.py).
AUTH_FIELDS = (
    ConfigField(
        "auth.type",
        "Authentication",
        "choice",
        choices=(("api_key", "API key"), ("basic", "Basic"), ("oauth2", "OAuth2 client credentials")),
        section="Authentication",
    ),
    ConfigField("auth.header", "API key header", help="e.g. X-Api-Key (api_key)", section="Authentication"),
    ConfigField("auth.username", "Username", help="basic", section="Authentication"),
    ConfigField("auth.token_url", "Token URL", help="oauth2", section="Authentication"),
    ConfigField("auth.client_id", "Client id", help="oauth2", section="Authentication"),
    ConfigField("auth.scope", "Scope", help="oauth2, optional", section="Authentication"),
    ConfigField(
        "auth.client_auth",
        "Client authentication",
        "choice",
        choices=(("body", "In the body"), ("basic", "HTTP basic")),
        section="Authentication",
    ),
    ConfigField("api_key", "API key", "secret", help="api_key auth", section="Authentication"),
    ConfigField("password", "Password", "secret", help="basic auth", section="Authentication"),
    ConfigField("client_secret", "OAuth2 client secret", "secret", help="oauth2", section="Authentication"),
)

config_form = ConfigForm(
    Protocol.REST,
    (
        ConfigField("base_url", "Base URL", required=True, help="https://erp.example.org/api"),
        ConfigField(
            "operations",
            "Operations",
            "json",
            direction=OUT,
            help='{"post_journal": {"method": "POST", "path": "/journal-entries", "result_field": "id"}}',
        ),
        ConfigField("idempotency_header", "Idempotency header", help="Default Idempotency-Key"),
        ConfigField("headers", "Extra headers", "json", help='{"X-Tenant": "north"}'),
        ConfigField("health_path", "Health path", help="For test connection, e.g. /health"),
        *AUTH_FIELDS,
    ),
)
