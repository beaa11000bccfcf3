"""The files / SFTP connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from healthsync.choices import Direction, Protocol
from healthsync.forms import ConfigField, ConfigForm

IN, OUT = Direction.INBOUND, Direction.OUTBOUND


def location_fields(prefix: str, direction: str, section: str) -> tuple[ConfigField, ...]:
    """A folder or SFTP location (transport.py); its password or key are secrets, declared separately."""
    return (
        ConfigField(
            f"{prefix}.type",
            "Where",
            "choice",
            choices=(("folder", "Folder"), ("sftp", "SFTP")),
            direction=direction,
            section=section,
        ),
        ConfigField(f"{prefix}.path", "Directory", direction=direction, section=section),
        ConfigField(f"{prefix}.host", "SFTP host", direction=direction, section=section),
        ConfigField(
            f"{prefix}.port", "SFTP port", "int", direction=direction, section=section, help="Default 22"
        ),
        ConfigField(f"{prefix}.username", "SFTP username", direction=direction, section=section),
        ConfigField(
            f"{prefix}.host_key",
            "SFTP host key",
            direction=direction,
            section=section,
            help="The server's public key (ssh-ed25519 AAAA…); or give a known_hosts file",
        ),
        ConfigField(f"{prefix}.known_hosts", "known_hosts file", direction=direction, section=section),
    )


SFTP_SECRET_FIELDS = (
    ConfigField("sftp_password", "SFTP password", "secret", section="SFTP login"),
    ConfigField("sftp_private_key", "SFTP private key (PEM)", "secret", section="SFTP login"),
)

PICKUP_FIELDS = (
    ConfigField("pattern", "File pattern", direction=IN, help="e.g. *.csv"),
    ConfigField(
        "ready",
        "Ready when",
        "choice",
        direction=IN,
        choices=(
            ("stable", "Size and time stable"),
            ("done_marker", "A .done marker exists"),
            ("temp_name", "No temporary name"),
        ),
    ),
    ConfigField("settle_seconds", "Settle seconds", "float", direction=IN),
    ConfigField("archive_dir", "Archive folder", direction=IN, help="Default archive"),
    ConfigField("error_dir", "Error folder", direction=IN, help="Default error"),
    ConfigField("message_type", "Message type", direction=IN),
)

config_form = ConfigForm(
    Protocol.FILE,
    (
        *location_fields("source", IN, "Pick up from"),
        *location_fields("destination", OUT, "Write to"),
        *PICKUP_FIELDS,
        ConfigField(
            "split",
            "Messages",
            "choice",
            direction=IN,
            choices=(("file", "One per file"), ("rows", "One per record")),
        ),
        ConfigField("file_name", "File name", direction=OUT, help="e.g. gl-{date}-{key}.csv"),
        ConfigField("layout", "Layout", "json", help='{"format": "csv", "fields": [{"name": "amount"}]}'),
        *SFTP_SECRET_FIELDS,
    ),
)
