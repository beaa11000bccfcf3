"""The REST connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from healthsync.choices import Direction, Protocol
from healthsync.forms import ConfigField, ConfigForm

IN, OUT = Direction.INBOUND, Direction.OUTBOUND

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
        ConfigField(
            "base_url",
            "Base URL",
            help="Required outbound; inbound only for test connection. https://erp.example.org/api",
        ),
        ConfigField(
            "operations",
            "Operations",
            "json",
            direction=OUT,
            help='{"post_journal": {"method": "POST", "path": "/journal-entries", "result_field": "id"}}',
        ),
        ConfigField(
            "idempotency_header",
            "Idempotency header",
            help="Default Idempotency-Key. Outbound: sent with each delivery; inbound: read as the message id",
        ),
        ConfigField(
            "type_field",
            "Message type field",
            direction=IN,
            help="JSON path of the message type in the body, default type (e.g. header.kind)",
        ),
        ConfigField(
            "message_type",
            "Fixed message type",
            direction=IN,
            help="Every body on this connector has this type; the type field is then not read",
        ),
        ConfigField(
            "id_field",
            "Message id field",
            direction=IN,
            help="JSON path of the sender's message id, default id; it must change with every message",
        ),
        ConfigField("api_key_header", "Inbound API key header", direction=IN, help="Default X-Api-Key"),
        ConfigField(
            "max_body_bytes",
            "Largest body (bytes)",
            "int",
            direction=IN,
            help="Larger bodies are refused (413)",
        ),
        ConfigField(
            "inbound_api_key",
            "Inbound API key",
            "secret",
            direction=IN,
            help="Callers of /api/v1/inbound/<code>/ send it",
        ),
        ConfigField("headers", "Extra headers", "json", help='{"X-Tenant": "north"}'),
        ConfigField("health_path", "Health path", help="For test connection, e.g. /health"),
        *AUTH_FIELDS,
    ),
)
