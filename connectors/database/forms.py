"""The database events connector's settings as the console edits them (healthsync.forms.ConfigField)."""

from __future__ import annotations

from healthsync.choices import Protocol
from healthsync.forms import ConfigField, ConfigForm

config_form = ConfigForm(
    Protocol.DATABASE,
    (
        ConfigField(
            "dsn",
            "Database DSN",
            "secret",
            help="postgresql://user:password@host/db or sqlite:///path/file.db (kept encrypted)",
        ),
        ConfigField("table", "Table or view", help="e.g. reporting.adt_events; or give a query"),
        ConfigField("query", "Query", help="One SELECT, instead of a table"),
        ConfigField("columns", "Columns", "list", help="Leave empty for every column"),
        ConfigField(
            "mark_column", "Mark column", required=True, help="Increases with each new row: id, updated_at"
        ),
        ConfigField(
            "tiebreak_column", "Tie-breaker column", help="Orders rows sharing a mark value, e.g. id"
        ),
        ConfigField("batch_size", "Batch size", "int", help="Rows per query (default 500)"),
        ConfigField("max_batches", "Batches per poll", "int", help="Default 20"),
        ConfigField("message_type", "Message type"),
    ),
)
