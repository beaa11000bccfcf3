"""Connector secrets encrypted at rest (Fernet), with key rotation (MultiFernet: the first key encrypts).

`settings.HEALTHSYNC_SECRETS_KEY` holds one Fernet key or several separated by commas (or a list of them):
the first encrypts, every one decrypts, so a new key goes first and the old one stays until
`secrets_rotate_all()` has re-encrypted every row. Generate a key with
``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``.

When the setting is empty the key is derived from SECRET_KEY so that the demo runs; a warning says so once,
because rotating SECRET_KEY would then make every stored secret unreadable.

Secrets are a flat dict of strings (``{"password": "…", "client_secret": "…"}``). They are never logged, never
rendered back to a form (forms show "•••• set"), and the audit log records only that they changed
(`mask_secret`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

MASK = "•••• set"


class SecretsUnreadable(Exception):
    """Stored secrets cannot be decrypted with any configured key (the key changed or was lost)."""


def _configured_keys() -> list[str]:
    value: Any = getattr(settings, "HEALTHSYNC_SECRETS_KEY", "") or ""
    if isinstance(value, list | tuple):
        return [str(k).strip() for k in value if str(k).strip()]
    return [k.strip() for k in str(value).split(",") if k.strip()]


@functools.cache
def _fernet_for(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        logger.warning(
            "HEALTHSYNC_SECRETS_KEY is not set: connector secrets are encrypted with a key derived from "
            "SECRET_KEY. Set HEALTHSYNC_SECRETS_KEY in a deployment, or changing SECRET_KEY will make every "
            "stored connector secret unreadable."
        )
        digest = hashlib.sha256(b"healthsync-connector-secrets:" + secret_key.encode()).digest()
        return MultiFernet([Fernet(base64.urlsafe_b64encode(digest))])
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"HEALTHSYNC_SECRETS_KEY entry {position} is not a Fernet key (url-safe base64 of 32 bytes); "
                'generate one with: python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"'
            ) from None
    return MultiFernet(fernets)


def fernet() -> MultiFernet:
    """The MultiFernet for the configured keys (cached per key set, so tests may override settings)."""
    return _fernet_for(tuple(_configured_keys()), str(settings.SECRET_KEY))


def encrypt_secrets(values: dict[str, str]) -> str:
    """A Fernet token holding `values`; an empty dict is stored as the empty string."""
    clean = {str(k): str(v) for k, v in values.items() if v not in (None, "")}
    if not clean:
        return ""
    return fernet().encrypt(json.dumps(clean, sort_keys=True).encode()).decode()


def decrypt_secrets(token: str) -> dict[str, str]:
    """The dict inside `token`; raises SecretsUnreadable when no configured key opens it."""
    if not token:
        return {}
    try:
        data = json.loads(fernet().decrypt(token.encode()))
    except (InvalidToken, ValueError):
        raise SecretsUnreadable(
            "Stored connector secrets cannot be decrypted with the configured HEALTHSYNC_SECRETS_KEY: "
            "put the old key back (after the new one) or enter the secrets again."
        ) from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def rotate_token(token: str) -> str:
    """Re-encrypt `token` with the first configured key (it must open with one of them)."""
    if not token:
        return ""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretsUnreadable(
            "Stored connector secrets cannot be decrypted with any configured key."
        ) from None


def secrets_rotate_all() -> int:
    """Re-encrypt every connector's secrets with the first key; returns how many rows changed.

    Run after putting a new key first in HEALTHSYNC_SECRETS_KEY; then the old key may be dropped.
    """
    from django.db import transaction

    from healthsync.models import Connector

    changed = 0
    with transaction.atomic():
        for connector in Connector.objects.select_for_update().exclude(secrets_token=""):
            connector.secrets_token = rotate_token(connector.secrets_token)
            # update_fields keeps the breaker counters and the rest of the row as they are.
            connector.save(update_fields=["secrets_token"])
            changed += 1
    return changed


def mask_secret(value: Any) -> str:
    """Audit log mask: records that the secrets changed, never any part of them (auditlog mask_callable)."""
    return "••••" if value not in (None, "", "None") else ""
