"""Forms of the core console pages, and the declared connector config forms the console renders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms

from healthsync.choices import MessageStatus
from healthsync.models import Connector


class MessageFilterForm(forms.Form):
    """Filters of the message list; every field is optional."""

    status = forms.ChoiceField(choices=[("", "Any status"), *MessageStatus.choices], required=False)
    type = forms.CharField(required=False, max_length=40, label="Type", help_text="e.g. ADT^A03")
    connector = forms.ModelChoiceField(
        queryset=Connector.objects.all(), required=False, empty_label="Any connector"
    )
    q = forms.CharField(required=False, max_length=200, label="Control id")


# Connector config forms ------------------------------------------------------------------------------
# Each protocol package declares its settings as a list of ConfigField (connectors/<kind>/forms.py) and
# registers it from its AppConfig.ready(); the console renders any of them with one generic form
# (views_connectors.ConnectorForm), so adding a protocol never means writing a page.

FIELD_KINDS = ("text", "int", "float", "bool", "choice", "list", "json", "secret")


@dataclass(frozen=True)
class ConfigField:
    """One setting of a protocol: where it lives in the config (dotted path) and how it is entered.

    kind: text, int, float, bool, choice (from `choices`), list (comma-separated → list of text), json (an
    object or list, for nested settings such as operations or a layout), or secret (path = the secret's
    name: a write-only password input, stored encrypted, never in the config). `direction` limits the
    field to inbound or outbound connectors.
    """

    path: str
    label: str
    kind: str = "text"
    required: bool = False
    help: str = ""
    choices: tuple[tuple[str, str], ...] = ()
    direction: str = ""
    section: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"{self.path}: kind must be one of {', '.join(FIELD_KINDS)}")

    @property
    def form_name(self) -> str:
        return ("secret_" if self.kind == "secret" else "cfg_") + self.path.replace(".", "__")

    def applies_to(self, direction: str) -> bool:
        return not self.direction or not direction or self.direction == direction


@dataclass(frozen=True)
class ConfigForm:
    """A protocol's declared settings."""

    protocol: str
    fields: tuple[ConfigField, ...]

    def for_direction(self, direction: str) -> list[ConfigField]:
        return [f for f in self.fields if f.applies_to(direction)]

    def secrets(self, direction: str = "") -> list[ConfigField]:
        return [f for f in self.for_direction(direction) if f.kind == "secret"]


class ConfigFormRegistry:
    def __init__(self) -> None:
        self._forms: dict[str, ConfigForm] = {}

    def register(self, form: ConfigForm) -> None:
        self._forms[form.protocol] = form

    def get(self, protocol: str) -> ConfigForm | None:
        return self._forms.get(protocol)

    def all(self) -> list[ConfigForm]:
        return list(self._forms.values())


config_forms = ConfigFormRegistry()


def config_get(config: dict[str, Any], path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def config_set(config: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, for None, remove) the value at a dotted path, creating the objects on the way."""
    *parents, last = path.split(".")
    node = config
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            if value is None:
                return
            child = node[part] = {}
        node = child
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value


_BOOL_CHOICES = [("", "—"), ("true", "Yes"), ("false", "No")]


def form_field(spec: ConfigField) -> forms.Field:
    """The Django form field for a declared setting (secrets are built by the connector form itself)."""
    # The adapter decides what is required (it sees the whole config, JSON included); the form only says so.
    help_text = f"Required. {spec.help}".strip() if spec.required else spec.help
    common: dict[str, Any] = {"label": spec.label, "required": False, "help_text": help_text}
    if spec.kind == "int":
        return forms.IntegerField(**common)
    if spec.kind == "float":
        return forms.FloatField(**common)
    if spec.kind == "bool":
        return forms.TypedChoiceField(
            choices=_BOOL_CHOICES, coerce=lambda v: v == "true", empty_value=None, **common
        )
    if spec.kind == "choice":
        return forms.ChoiceField(choices=[("", "—"), *spec.choices], **common)
    if spec.kind == "json":
        return forms.JSONField(
            widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "class": "code"}), **common
        )
    if spec.kind == "list":
        return forms.CharField(**{**common, "help_text": help_text or "Separate values with commas."})
    return forms.CharField(**common)


def initial_value(spec: ConfigField, value: Any) -> Any:
    """How a stored config value shows in its input."""
    if value is None:
        return None
    if spec.kind == "bool":
        return "true" if value else "false"
    if spec.kind == "list" and isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return value


def config_value(spec: ConfigField, cleaned: Any) -> Any:
    """The config value for what was entered; None removes the setting."""
    if cleaned is None or cleaned == "":
        return None
    if spec.kind == "list":
        return [part.strip() for part in str(cleaned).split(",") if part.strip()] or None
    if spec.kind == "text":
        return str(cleaned).strip() or None
    return cleaned
