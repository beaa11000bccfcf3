"""Load the demo: the reference systems, connectors, mappings and schemas, and one user per console role."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group, User
from django.contrib.auth.password_validation import validate_password
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from healthsync import roles

# One shared, documented password (README.md): demo users exist only on a laptop.
DEMO_PASSWORD = "healthsync-demo"  # noqa: S105

# username, role (None: superuser), what they do in the demo
DEMO_USERS: list[tuple[str, str | None, str]] = [
    ("admin", None, "Superuser: Django admin and every page"),
    ("board", roles.GOVERNANCE_BOARD, "Governance board: reviews and approves changes"),
    ("board2", roles.GOVERNANCE_BOARD, "Second board member, for four-eyes approval"),
    ("rcm", roles.REVENUE_CYCLE, "Revenue cycle: works the exception queue"),
    ("exec", roles.EXECUTIVE, "Executive: KPI dashboards"),
    ("engineer", roles.INTEGRATION_ENGINEER, "Integration engineer: connectors, mappings, messages"),
]


@transaction.atomic
def demo_users_load() -> list[User]:
    """Create or reset the demo users so each has its role and the documented password."""
    users = []
    # One hash for all: the password is published anyway, and hashing is slow by design.
    hashed = make_password(DEMO_PASSWORD)
    for username, role, _ in DEMO_USERS:
        user, _ = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.org"})
        validate_password(DEMO_PASSWORD, user)
        user.password = hashed
        user.is_active = True
        user.is_superuser = role is None
        user.is_staff = role is None
        user.save()
        user.groups.set([Group.objects.get(name=role)] if role else [])
        users.append(user)
    return users


class Command(BaseCommand):
    help = "Load the demo configuration and users (idempotent). Refuses to run in production."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-users", action="store_true", help="Load the configuration only.")
        parser.add_argument(
            "--claims",
            choices=("x12", "json"),
            default="x12",
            help="How claims go to the RCM: X12 837I, answered by 277CA/835 files in the payer mailbox "
            "(default), or the JSON claims API.",
        )
        parser.add_argument(
            "--rcm-mailbox",
            default="",
            help="Folder the RCM drops its 277CA and 835 files into (x12; default var/rcm-mailbox).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("load_demo creates users with a published password; not in production.")
        from healthsync.seed import seed_reference_config

        seed_reference_config()
        self.stdout.write("Reference systems, connectors, mappings and schemas are loaded.")
        self._claims_route(options["claims"], options["rcm_mailbox"])
        if options["no_users"]:
            return
        demo_users_load()
        self.stdout.write(f"Demo users (password for all: {DEMO_PASSWORD}):")
        for username, _, what in DEMO_USERS:
            self.stdout.write(f"  {username:<9} {what}")

    def _claims_route(self, route: str, mailbox: str = "") -> None:
        from decimal import Decimal
        from pathlib import Path

        from healthsync.models import Connector
        from healthsync.seed_workflows import (
            X12_CLAIMS_CONNECTOR,
            X12_REMITS_CONNECTOR,
            claims_route_x12,
            default_rcm_mailbox,
        )
        from workflows.discharge_to_bill import DEFAULT_PAYER
        from workflows.models import ReimbursementRate

        # The forecast needs a rate: the demo's governed default is 80% of charges.
        ReimbursementRate.objects.get_or_create(
            payer_id=DEFAULT_PAYER, defaults={"payer_name": "Default", "percent": Decimal("80")}
        )
        if route == "x12":
            mailbox = mailbox or default_rcm_mailbox()
            # The pick-up folder must exist before the first poll, whether or not the RCM has written yet.
            Path(mailbox).mkdir(parents=True, exist_ok=True)
            claims_route_x12(mailbox=mailbox)
            self.stdout.write(
                f"Claims go to the RCM as X12 837I (rcm-claims-x12); its 277CA and 835 files are picked up "
                f"from {mailbox} ({X12_REMITS_CONNECTOR})."
            )
        else:
            Connector.objects.filter(code__in=[X12_CLAIMS_CONNECTOR, X12_REMITS_CONNECTOR]).update(
                is_enabled=False
            )
            Connector.objects.filter(code="rcm-claims").update(is_enabled=True)
            self.stdout.write("Claims go to the RCM as JSON (rcm-claims).")
