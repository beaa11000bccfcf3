"""The X12 connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from connectors.files.forms import PICKUP_FIELDS, SFTP_SECRET_FIELDS, location_fields
from healthsync.choices import Direction, Protocol
from healthsync.forms import ConfigField, ConfigForm

IN, OUT = Direction.INBOUND, Direction.OUTBOUND

config_form = ConfigForm(
    Protocol.X12,
    (
        ConfigField(
            "claim_type", "Claim type", "choice", direction=OUT, choices=(("837I", "837I"), ("837P", "837P"))
        ),
        ConfigField(
            "transport",
            "Send by",
            "choice",
            direction=OUT,
            choices=(("http", "HTTP POST"), ("file", "File drop")),
        ),
        ConfigField("url", "Clearinghouse URL", direction=OUT, help="transport http"),
        ConfigField(
            "file",
            "File destination",
            "json",
            direction=OUT,
            help='{"destination": {"type": "folder", "path": "…"}}',
        ),
        ConfigField("x12", "Envelope", "json", help='{"sender_id": "…", "receiver_id": "…", "usage": "T"}'),
        *location_fields("source", IN, "Pick up from"),
        *PICKUP_FIELDS,
        *SFTP_SECRET_FIELDS,
    ),
)
