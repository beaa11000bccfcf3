"""The event-stream connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from healthsync.choices import Direction, Protocol
from healthsync.forms import ConfigField, ConfigForm

config_form = ConfigForm(
    Protocol.STREAM,
    (
        ConfigField(
            "servers", "Servers", "list", required=True, help="nats:// or tls:// URLs, comma-separated"
        ),
        ConfigField("stream", "Stream", help="JetStream stream name (default HEALTHSYNC)"),
        ConfigField("subject_prefix", "Subject prefix", help="Events go to <prefix>.<event type>"),
        ConfigField(
            "operations",
            "Operations",
            "json",
            required=True,
            direction=Direction.OUTBOUND,
            help='{"publish_events": {"event_types": ["claim.*", "encounter.discharged"]}}',
        ),
        ConfigField("durable", "Durable consumer", required=True, direction=Direction.INBOUND),
        ConfigField("subjects", "Subjects", "list", direction=Direction.INBOUND, help="Subject filters"),
    ),
)
