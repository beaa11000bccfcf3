"""The HL7 v2 / MLLP connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from healthsync.choices import Direction, Protocol
from healthsync.forms import ConfigField, ConfigForm

IN = Direction.INBOUND

config_form = ConfigForm(
    Protocol.HL7V2,
    (
        ConfigField(
            "host", "Listen on host", direction=IN, help="Default 127.0.0.1; 0.0.0.0 for every interface"
        ),
        ConfigField("port", "MLLP port", "int", direction=IN),
        ConfigField(
            "accepted_types", "Accepted message types", "list", direction=IN, help="e.g. ADT^A01, ADT^A03"
        ),
        ConfigField("tls_cert_file", "TLS certificate (PEM file)", direction=IN, section="TLS"),
        ConfigField("tls_key_file", "TLS private key (PEM file)", direction=IN, section="TLS"),
        ConfigField(
            "tls_client_ca_file",
            "Client CA (PEM file)",
            direction=IN,
            section="TLS",
            help="Set to require senders to present a certificate (mutual TLS)",
        ),
    ),
)
