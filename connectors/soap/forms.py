"""The SOAP connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from healthsync.choices import Protocol
from healthsync.forms import ConfigField, ConfigForm

config_form = ConfigForm(
    Protocol.SOAP,
    (
        ConfigField("wsdl", "WSDL URL", required=True),
        ConfigField("endpoint", "Endpoint", help="Overrides the WSDL's address, e.g. a tenant URL"),
        ConfigField(
            "operations",
            "Operations",
            "json",
            required=True,
            help='{"post_journal": {"operation": "Submit_Accounting_Journal", "request": "workday_journal", '
            '"result_path": "Accounting_Journal_Reference.ID"}}',
        ),
        ConfigField(
            "auth.type",
            "Authentication",
            "choice",
            choices=(("wsse", "WS-Security UsernameToken"), ("basic", "HTTP basic")),
            section="Authentication",
        ),
        ConfigField("auth.username", "Username", section="Authentication"),
        ConfigField("password", "Password", "secret", section="Authentication"),
    ),
)
