"""Connector secrets: encrypted at rest with Fernet, rotatable, never in the audit log."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from auditlog.models import LogEntry
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from healthsync.choices import Direction, Protocol
from healthsync.models import Connector, System
from healthsync.secrets import (
    SecretsUnreadable,
    decrypt_secrets,
    encrypt_secrets,
    fernet,
    secrets_rotate_all,
)

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def _connector(**secrets: str) -> Connector:
    system = System.objects.create(code="rcm", name="RCM", kind="rcm")
    connector = Connector(
        system=system,
        code="rcm-api",
        name="RCM API",
        direction=Direction.OUTBOUND,
        protocol=Protocol.REST,
        config={"base_url": "http://127.0.0.1:9", "operations": {}},
    )
    connector.secrets = secrets
    connector.save()
    return connector


def test_secrets_round_trip_and_the_token_hides_them(settings: Any) -> None:
    settings.HEALTHSYNC_SECRETS_KEY = NEW
    token = encrypt_secrets({"password": "hunter2", "empty": ""})
    assert "hunter2" not in token
    assert decrypt_secrets(token) == {"password": "hunter2"}
    assert encrypt_secrets({}) == "" and decrypt_secrets("") == {}


def test_without_a_key_one_is_derived_from_secret_key_with_a_warning(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.HEALTHSYNC_SECRETS_KEY = ""
    settings.SECRET_KEY = "a-secret-key-only-this-test-uses"
    with caplog.at_level(logging.WARNING, logger="healthsync.secrets"):
        token = encrypt_secrets({"api_key": "k"})
    assert "HEALTHSYNC_SECRETS_KEY is not set" in caplog.text
    assert decrypt_secrets(token) == {"api_key": "k"}
    settings.SECRET_KEY = "another-secret-key"
    with pytest.raises(SecretsUnreadable, match="cannot be decrypted"):
        decrypt_secrets(token)


def test_a_new_key_first_still_reads_old_tokens_and_rotation_rewrites_them(db: None, settings: Any) -> None:
    settings.HEALTHSYNC_SECRETS_KEY = OLD
    connector = _connector(client_secret="s3cret")
    old_token = connector.secrets_token
    settings.HEALTHSYNC_SECRETS_KEY = f"{NEW},{OLD}"
    assert Connector.objects.get().secrets == {"client_secret": "s3cret"}
    assert secrets_rotate_all() == 1
    settings.HEALTHSYNC_SECRETS_KEY = [NEW]
    rotated = Connector.objects.get()
    assert rotated.secrets_token != old_token
    assert rotated.secrets == {"client_secret": "s3cret"}


def test_a_token_from_an_unknown_key_is_unreadable(settings: Any) -> None:
    settings.HEALTHSYNC_SECRETS_KEY = OLD
    token = encrypt_secrets({"password": "p"})
    settings.HEALTHSYNC_SECRETS_KEY = NEW
    with pytest.raises(SecretsUnreadable):
        decrypt_secrets(token)


def test_a_malformed_key_is_a_configuration_error(settings: Any) -> None:
    settings.HEALTHSYNC_SECRETS_KEY = f"{NEW},not-a-fernet-key"
    with pytest.raises(ImproperlyConfigured, match="entry 2 is not a Fernet key"):
        fernet()


def test_the_secrets_persist_encrypted_and_read_back(db: None, settings: Any) -> None:
    settings.HEALTHSYNC_SECRETS_KEY = NEW
    connector = _connector(password="hunter2")
    stored = Connector.objects.values_list("secrets_token", flat=True).get(pk=connector.pk)
    assert "hunter2" not in stored
    assert Connector.objects.get().secrets == {"password": "hunter2"}


def test_the_audit_log_records_that_secrets_changed_but_nothing_of_them(db: None, settings: Any) -> None:
    settings.HEALTHSYNC_SECRETS_KEY = NEW
    connector = _connector(password="hunter2")
    connector.secrets = {"password": "correct-horse"}
    connector.save()
    entries = LogEntry.objects.get_for_object(connector)
    assert entries.count() == 2
    text = json.dumps([entry.changes for entry in entries])
    assert "hunter2" not in text and "correct-horse" not in text
    assert connector.secrets_token[:20] not in text and connector.secrets_token[-20:] not in text
    latest = entries.order_by("-timestamp", "-id").first()
    changes = latest.changes if isinstance(latest.changes, dict) else json.loads(latest.changes)
    assert changes["secrets_token"] == ["••••", "••••"]


def test_the_rotate_secrets_command_re_encrypts_with_the_newest_key(db: None, settings: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    settings.HEALTHSYNC_SECRETS_KEY = OLD
    _connector(password="p4ss")
    settings.HEALTHSYNC_SECRETS_KEY = f"{NEW},{OLD}"
    out = StringIO()
    call_command("rotate_secrets", stdout=out)
    assert "1 connector" in out.getvalue()
    settings.HEALTHSYNC_SECRETS_KEY = NEW  # the old key is gone: the rotated token must still read
    assert Connector.objects.get().secrets == {"password": "p4ss"}
