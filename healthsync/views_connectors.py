"""Console pages for connectors: list, detail with live health, create, edit, and "test connection".

Integration engineers author connectors (add/change permissions); other roles with view_connector read them.
Settings are validated by the protocol's adapter (Connector.clean). Credentials are written to the encrypted
secrets and never shown again: the form says "•••• set", a new value replaces the old one, and a tick clears it.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from auditlog.context import set_actor
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from healthsync.choices import Direction
from healthsync.forms import config_forms, config_get, config_set, config_value, form_field, initial_value
from healthsync.models import Connector, Delivery, Message
from healthsync.registry import connector_registry
from healthsync.secrets import MASK, SecretsUnreadable
from healthsync.views import render_htmx

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

# Credentials the console knew before protocols declared their own (healthsync.forms.ConfigField kind
# "secret"); kept so that a stored secret of any name can still be replaced or removed.
SECRET_LABELS: dict[str, str] = {
    "api_key": "API key (auth type api_key)",
    "password": "Password (auth type basic)",
    "client_secret": "OAuth2 client secret (auth type oauth2)",
    "inbound_api_key": "Inbound API key (callers of the FHIR endpoint send it)",
}
# Where older configs kept a credential in plain JSON: moved into the secrets on save.
_LEGACY_CONFIG_SECRETS = {"value": "api_key", "password": "password", "client_secret": "client_secret"}
_LEGACY_LOCATION_SECRETS = {"password": "sftp_password", "private_key": "sftp_private_key"}
_LOCATIONS = (("source",), ("destination",), ("file", "destination"))


def _secret_labels() -> dict[str, str]:
    labels = dict(SECRET_LABELS)
    for declared in config_forms.all():
        for spec in declared.secrets():
            labels.setdefault(spec.path, spec.label)
    return labels


class ConnectorForm(forms.ModelForm):
    """A connector's settings: the protocol's declared fields (healthsync.forms.ConfigField), the whole
    config as JSON for anything they do not cover, and write-only credentials. The adapter validates the
    result (Connector.clean)."""

    config = forms.CharField(
        label="Advanced: settings as JSON",
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false", "class": "code"}),
        required=False,
        help_text="Every setting as JSON; the fields above win where they were changed. Never put credentials here.",
    )

    class Meta:
        model = Connector
        fields = [
            "system",
            "code",
            "name",
            "direction",
            "protocol",
            "lane",
            "is_enabled",
            "config",
            "retry_max_attempts",
            "retry_backoff_seconds",
            "timeout_seconds",
            "breaker_threshold",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        instance: Connector = self.instance
        self.stored_secrets: dict[str, str] = {}
        self.secrets_unreadable = False
        if instance.pk:
            self.fields["code"].disabled = True
            try:
                self.stored_secrets = instance.secrets
            except SecretsUnreadable:
                self.secrets_unreadable = True
        config = instance.config or {}
        self.initial["config"] = json.dumps(config, indent=2, sort_keys=True)
        source = self.data if self.is_bound else self.initial
        self.protocol = str(source.get("protocol") or instance.protocol or "")
        self.direction = str(source.get("direction") or instance.direction or "")
        declared = config_forms.get(self.protocol)
        self.config_specs = [
            spec
            for spec in (declared.for_direction(self.direction) if declared else [])
            if spec.kind != "secret"
        ]
        for spec in self.config_specs:
            self.fields[spec.form_name] = form_field(spec)
            self.initial[spec.form_name] = initial_value(spec, config_get(config, spec.path))
        labels = _secret_labels()
        for name, label in labels.items():
            is_set = name in self.stored_secrets
            self.fields[f"secret_{name}"] = forms.CharField(
                label=label,
                required=False,
                strip=False,
                # render_value=False: a stored secret never goes back to the browser, not even masked.
                widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
                help_text=f"{MASK}; a new value replaces it." if is_set else "Not set.",
            )
            self.fields[f"clear_{name}"] = forms.BooleanField(label="Remove", required=False)
        if declared is not None:
            self.secret_names = [spec.path for spec in declared.secrets(self.direction)]
        else:
            self.secret_names = list(labels) if not self.protocol else []
        # A secret stored under a name the protocol no longer declares can still be removed.
        self.secret_names += [n for n in self.stored_secrets if n not in self.secret_names and n in labels]

    def connector_fields(self) -> list[Any]:
        """The connector's own fields (not its settings or credentials), in form order."""
        return [self[name] for name in self._meta.fields or () if name != "config"]

    def config_sections(self) -> list[dict[str, Any]]:
        """The declared fields grouped by section, in declaration order, for the template."""
        sections: dict[str, list[Any]] = {}
        for spec in self.config_specs:
            sections.setdefault(spec.section or "Settings", []).append(self[spec.form_name])
        return [{"title": title, "fields": fields} for title, fields in sections.items()]

    def secret_rows(self) -> list[dict[str, Any]]:
        """The secret inputs that apply to the chosen protocol (all of them while none is chosen)."""
        return [
            {
                "name": name,
                "field": self[f"secret_{name}"],
                "clear": self[f"clear_{name}"],
                "is_set": name in self.stored_secrets,
            }
            for name in self.secret_names
        ]

    def clean_config(self) -> dict[str, Any]:
        text = self.cleaned_data.get("config") or "{}"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
            ) from None
        if not isinstance(value, dict):
            raise ValidationError("The settings must be a JSON object.")
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        config = cleaned.get("config")
        if isinstance(config, dict):
            # Only fields the person changed override the JSON, so an edit in the JSON box is not undone
            # by the unchanged field showing the old value.
            for spec in self.config_specs:
                # A field absent from the post (a client sending the JSON alone) leaves the setting as is.
                submitted = spec.form_name in self.data
                if submitted and spec.form_name in self.changed_data and spec.form_name in cleaned:
                    config_set(config, spec.path, config_value(spec, cleaned[spec.form_name]))
            cleaned["config"] = config
        return cleaned

    def _update_errors(self, errors: ValidationError) -> None:
        """Put the adapter's config errors next to the declared field they name, the rest on the JSON.

        Overrides ModelForm's hook for model validation errors: Connector.clean reports them all under
        "config" (the model knows no form fields)."""
        by_field = getattr(errors, "error_dict", None)
        if by_field and "config" in by_field:
            unplaced = []
            for error in by_field.pop("config"):
                for message in error.messages:
                    spec = self._spec_named_in(message)
                    if spec is None:
                        unplaced.append(message)
                    else:
                        super()._update_errors(ValidationError({spec.form_name: [message]}))
            if unplaced:
                by_field["config"] = [ValidationError(m) for m in unplaced]
        super()._update_errors(errors)

    def _spec_named_in(self, message: str) -> Any:
        for spec in sorted(self.config_specs, key=lambda s: -len(s.path)):
            for name in (spec.path, spec.path.rsplit(".", 1)[-1]):
                if message.startswith((f"{name} ", f"{name}:", f"{name}.")):
                    return spec
        return None

    def new_secrets(self) -> dict[str, str]:
        """The secrets after this save: stored ones, replaced, cleared, plus any moved out of the config."""
        values = dict(self.stored_secrets)
        config = self.cleaned_data.get("config") or {}
        auth = config.get("auth")
        if isinstance(auth, dict):
            for key, name in _LEGACY_CONFIG_SECRETS.items():
                if auth.get(key):
                    values[name] = str(auth.pop(key))
        for path in _LOCATIONS:
            location = config_get(config, ".".join(path))
            if isinstance(location, dict):
                for key, name in _LEGACY_LOCATION_SECRETS.items():
                    if location.get(key):
                        values[name] = str(location.pop(key))
        for name in _secret_labels():
            if self.cleaned_data.get(f"clear_{name}"):
                values.pop(name, None)
            new = self.cleaned_data.get(f"secret_{name}") or ""
            if new:
                values[name] = new
        return values


@transaction.atomic
def connector_save(*, form: ConnectorForm, actor: User) -> Connector:
    """Create or update a connector from a valid form: settings, policy and encrypted secrets, audited."""
    connector: Connector = form.save(commit=False)
    new_secrets = form.new_secrets()  # may strip legacy credentials out of the config first
    connector.config = form.cleaned_data["config"]
    if form.secrets_unreadable or new_secrets != form.stored_secrets:
        connector.secrets = new_secrets
    with set_actor(actor):
        connector.save()
    logger.info("connector %s saved by user %s", connector.pk, actor.pk)
    return connector


@dataclass(frozen=True)
class Health:
    """What the detail page shows about a connector's traffic and its circuit breaker."""

    last_message_at: datetime | None
    last_delivery: Delivery | None
    breaker_open: bool
    breaker_half_open: bool
    breaker_open_until: datetime | None
    consecutive_failures: int
    checked_at: datetime


def connector_health(connector: Connector) -> Health:
    last_message = (
        Message.objects.filter(connector=connector)
        .order_by("-received_at")
        .values_list("received_at", flat=True)
    ).first()
    last_delivery = (
        Delivery.objects.filter(connector=connector)
        .exclude(sent_at=None)
        .only("status", "last_error", "sent_at", "succeeded_at", "external_id", "attempts", "operation")
        .order_by("-sent_at")
        .first()
    )
    now = timezone.now()
    open_until = connector.breaker_open_until
    return Health(
        last_message_at=last_message,
        last_delivery=last_delivery,
        breaker_open=bool(open_until and open_until > now),
        # The pause is over but no send has succeeded yet: the next delivery is the probe.
        breaker_half_open=bool(open_until and open_until <= now),
        breaker_open_until=open_until,
        consecutive_failures=connector.consecutive_failures,
        checked_at=now,
    )


def connector_test_connection(connector: Connector) -> tuple[bool, str]:
    """Ask the adapter; an adapter without the method can still be checked when it names a port to listen on."""
    try:
        adapter = connector_registry.get(connector.protocol)
    except KeyError:
        return False, f"No adapter is registered for {connector.protocol!r}."
    test = getattr(adapter, "test_connection", None)
    if test is not None:
        try:
            return test(connector)
        except Exception as exc:  # the console reports any failure rather than a 500
            logger.exception("connector %s: test_connection failed", connector.pk)
            return False, f"The test failed: {type(exc).__name__}"
    port = (connector.config or {}).get("port")
    if connector.direction == Direction.INBOUND and isinstance(port, int):
        return port_is_listening(str((connector.config or {}).get("host") or "127.0.0.1"), port)
    return False, f"The {connector.get_protocol_display()} adapter cannot test a connection yet."


def port_is_listening(host: str, port: int, timeout: float = 2.0) -> tuple[bool, str]:
    """Whether something accepts TCP connections on host:port (an inbound listener is up)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port} does not accept connections ({exc.strerror or type(exc).__name__})"


def _get_connector(code: str) -> Connector:
    return get_object_or_404(Connector.objects.select_related("system"), code=code)


@login_required
@permission_required("healthsync.view_connector", raise_exception=True)
@require_GET
def connector_list(request: HttpRequest) -> HttpResponse:
    connectors = list(Connector.objects.select_related("system").order_by("system__name", "name"))
    context = {
        "connectors": connectors,
        "can_add": request.user.has_perm("healthsync.add_connector"),
    }
    return render(request, "healthsync/connectors/list.html", context)


@login_required
@permission_required("healthsync.view_connector", raise_exception=True)
@require_GET
def connector_detail(request: HttpRequest, code: str) -> HttpResponse:
    connector = _get_connector(code)
    try:
        secret_names = sorted(connector.secrets)
        secrets_unreadable = False
    except SecretsUnreadable:
        secret_names, secrets_unreadable = [], True
    labels = _secret_labels()
    declared = config_forms.get(connector.protocol)
    specs = declared.for_direction(connector.direction) if declared else []
    context = {
        "connector": connector,
        "config_json": json.dumps(connector.config or {}, indent=2, sort_keys=True),
        "config_facts": [
            (spec.label, value)
            for spec in specs
            if spec.kind not in ("secret", "json")
            and (value := initial_value(spec, config_get(connector.config or {}, spec.path)))
            not in (None, "")
        ],
        "secret_names": [(name, labels.get(name, name)) for name in secret_names],
        "secrets_unreadable": secrets_unreadable,
        "health": connector_health(connector),
        "can_change": request.user.has_perm("healthsync.change_connector"),
    }
    return render(request, "healthsync/connectors/detail.html", context)


@login_required
@permission_required("healthsync.view_connector", raise_exception=True)
@require_GET
def connector_health_panel(request: HttpRequest, code: str) -> HttpResponse:
    """The health panel alone, which the detail page refreshes with htmx."""
    connector = _get_connector(code)
    context = {"connector": connector, "health": connector_health(connector)}
    return render_htmx(request, "healthsync/connectors/detail.html", "health", context)


@login_required
@permission_required("healthsync.change_connector", raise_exception=True)
@require_POST
def connector_test(request: HttpRequest, code: str) -> HttpResponse:
    connector = _get_connector(code)
    ok, detail = connector_test_connection(connector)
    logger.info("connector %s: test connection %s", connector.pk, "ok" if ok else "failed")
    context = {"connector": connector, "test_ok": ok, "test_detail": detail}
    if getattr(request, "htmx", False):
        return render(request, "healthsync/connectors/detail.html#test-result", context)
    messages.success(request, f"Connection test passed: {detail}") if ok else messages.error(
        request, f"Connection test failed: {detail}"
    )
    return redirect("connector_detail", code=connector.code)


def _edit(request: HttpRequest, connector: Connector | None) -> HttpResponse:
    instance = connector or Connector()
    if request.method == "POST":
        form = ConnectorForm(request.POST, instance=instance)
        if form.is_valid():
            saved = connector_save(form=form, actor=request.user)  # type: ignore[arg-type]
            messages.success(request, f"Connector {saved.code} saved.")
            return redirect("connector_detail", code=saved.code)
        status = 400
    else:
        # ?protocol=…&direction=… (the new-connector page's first step) shows that protocol's fields.
        chosen = {k: request.GET[k] for k in ("protocol", "direction", "system") if request.GET.get(k)}
        form = ConnectorForm(instance=instance, initial=chosen)
        status = 200
    context = {"form": form, "connector": connector, "protocols": connector_registry.protocols()}
    return render(request, "healthsync/connectors/edit.html", context, status=status)


@login_required
@permission_required("healthsync.add_connector", raise_exception=True)
@require_http_methods(["GET", "POST"])
def connector_create(request: HttpRequest) -> HttpResponse:
    return _edit(request, None)


@login_required
@permission_required("healthsync.change_connector", raise_exception=True)
@require_http_methods(["GET", "POST"])
def connector_edit(request: HttpRequest, code: str) -> HttpResponse:
    return _edit(request, _get_connector(code))
