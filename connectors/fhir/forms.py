"""The FHIR connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from connectors.rest.forms import AUTH_FIELDS
from healthsync.choices import Direction, Protocol
from healthsync.forms import ConfigField, ConfigForm

IN, OUT = Direction.INBOUND, Direction.OUTBOUND

config_form = ConfigForm(
    Protocol.FHIR,
    (
        ConfigField("base_url", "FHIR server base URL", help="Outbound, or inbound when polling"),
        ConfigField("api_key_header", "Inbound API key header", direction=IN, help="Default X-Api-Key"),
        ConfigField("accepted_types", "Accepted resource types", "list", direction=IN),
        ConfigField(
            "poll",
            "Polling",
            "json",
            direction=IN,
            help='{"resource_types": ["Encounter"], "page_size": 50}: poll the server by _lastUpdated',
        ),
        ConfigField(
            "operations",
            "Operations",
            "json",
            direction=OUT,
            help='{"create_claim": {"mode": "create", "identifier_system": "…"}}',
        ),
        ConfigField("health_path", "Health path", direction=OUT, help="e.g. /metadata"),
        ConfigField(
            "inbound_api_key",
            "Inbound API key",
            "secret",
            direction=IN,
            help="Callers of the FHIR endpoint send it",
        ),
        *AUTH_FIELDS,
    ),
)
