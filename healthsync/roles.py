"""The four roles of the console as Django groups, each with the permissions its job needs.

`sync_roles()` is idempotent and runs after every migrate, so every database has the groups.
"""

from __future__ import annotations

GOVERNANCE_BOARD = "Governance board"
REVENUE_CYCLE = "Revenue cycle"
EXECUTIVE = "Executive"
INTEGRATION_ENGINEER = "Integration engineer"

_CONFIG_VIEW = [
    "healthsync.view_system",
    "healthsync.view_connector",
    "healthsync.view_mappingset",
    "healthsync.view_mappingversion",
    "healthsync.view_mappingrule",
    "healthsync.view_schemaversion",
    "healthsync.view_dataownership",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    GOVERNANCE_BOARD: [
        *_CONFIG_VIEW,
        "healthsync.approve_mappingversion",
        "healthsync.approve_schemaversion",
        "healthsync.change_dataownership",
        "workflows.view_kpis",
        "healthsync.view_exceptionitem",
    ],
    REVENUE_CYCLE: [
        "healthsync.view_exceptionitem",
        "healthsync.change_exceptionitem",
        "healthsync.work_exceptionitem",
        "healthsync.view_phi",
        "workflows.view_workflowrun",
        "workflows.view_kpis",
    ],
    EXECUTIVE: [
        "workflows.view_kpis",
    ],
    INTEGRATION_ENGINEER: [
        *_CONFIG_VIEW,
        "healthsync.add_system",
        "healthsync.change_system",
        "healthsync.add_connector",
        "healthsync.change_connector",
        "healthsync.add_mappingset",
        "healthsync.change_mappingset",
        "healthsync.add_mappingversion",
        "healthsync.add_mappingrule",
        "healthsync.change_mappingrule",
        "healthsync.add_schemaversion",
        "healthsync.view_message",
        "healthsync.replay_message",
        "healthsync.view_phi",
        "healthsync.view_canonicalevent",
        "healthsync.view_delivery",
        "healthsync.retry_delivery",
        "healthsync.view_exceptionitem",
        "healthsync.work_exceptionitem",
        "workflows.view_workflowrun",
        "workflows.view_kpis",
    ],
}


def sync_roles() -> None:
    """Create or update the role groups so they hold exactly the permissions listed above."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Group, Permission

    for app_config in apps.get_app_configs():
        # Django creates permissions app by app after migrate; make sure all exist before linking them.
        create_permissions(app_config, verbosity=0)
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = []
        for dotted in codenames:
            app_label, codename = dotted.split(".")
            perms.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(perms)
