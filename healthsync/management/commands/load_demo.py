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
    # From `demo` only (call_command): the payroll SFTP location and its password, never on a command line.
    stealth_options = ("payroll_source", "payroll_secrets")

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
        parser.add_argument(
            "--payroll-drop",
            default="",
            help="Folder the payroll system drops its files into (default var/payroll-drop; `demo` uses SFTP).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("load_demo creates users with a published password; not in production.")
        from healthsync.seed import seed_reference_config

        seed_reference_config()
        self.stdout.write("Reference systems, connectors, mappings and schemas are loaded.")
        self._claims_route(options["claims"], options["rcm_mailbox"])
        self._payroll_route(
            options.get("payroll_source") or options["payroll_drop"], options.get("payroll_secrets")
        )
        if options["no_users"]:
            return
        demo_users_load()
        self.stdout.write(f"Demo users (password for all: {DEMO_PASSWORD}):")
        for username, _, what in DEMO_USERS:
            self.stdout.write(f"  {username:<9} {what}")

    def _payroll_route(self, source: dict[str, Any] | str, secrets: dict[str, str] | None) -> None:
        from pathlib import Path

        from connectors.simulators.payroll import ALLOCATION_RULES
        from healthsync.seed_workflows import PAYROLL_CONNECTOR, default_payroll_drop, payroll_route
        from workflows.models import AllocationRule

        # The demo payroll's departments, split to cost centres; rules someone has edited are left alone.
        for department, targets in ALLOCATION_RULES.items():
            for cost_center, share in targets:
                AllocationRule.objects.get_or_create(
                    department=department, cost_center=cost_center, defaults={"share": share}
                )
        if isinstance(source, dict):
            payroll_route(source=source, secrets=secrets)
            where = f"sftp://{source.get('host')}:{source.get('port')}{source.get('path')}"
        else:
            where = source or default_payroll_drop()
            Path(where).mkdir(parents=True, exist_ok=True)
            payroll_route(source=where)
        self.stdout.write(
            f"Payroll files are picked up from {where} ({PAYROLL_CONNECTOR}); the labour-allocation job posts "
            "each period's journal to the ERP."
        )

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
