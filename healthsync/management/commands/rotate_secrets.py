"""Re-encrypt every connector's credentials with the first key in HEALTHSYNC_SECRETS_KEY.

Rotation: put the new key first and keep the old one after it (comma-separated), run this command, then
drop the old key once it reports every row re-encrypted.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from healthsync.secrets import secrets_rotate_all


class Command(BaseCommand):
    help = "Re-encrypt all connector secrets with the newest key in HEALTHSYNC_SECRETS_KEY."

    def handle(self, *args: Any, **options: Any) -> None:
        count = secrets_rotate_all()
        self.stdout.write(f"re-encrypted the secrets of {count} connector(s)")
