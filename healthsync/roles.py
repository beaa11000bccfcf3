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

# Governance: everyone with a role reads change requests; engineers and the board author; the board approves.
_GOVERNANCE_READ = ["healthsync.view_changerequest"]
_GOVERNANCE_AUTHOR = [
    "healthsync.view_changerequest",
    "healthsync.add_changerequest",
    "healthsync.deploy_changerequest",
    "healthsync.view_samplecase",
    "healthsync.add_samplecase",
    "healthsync.view_ownershipexception",
    "auditlog.view_logentry",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    GOVERNANCE_BOARD: [
        *_CONFIG_VIEW,
        "healthsync.approve_mappingversion",
        "healthsync.approve_schemaversion",
        "healthsync.change_dataownership",
        "workflows.view_kpis",
        "healthsync.view_exceptionitem",
        *_GOVERNANCE_AUTHOR,
        "healthsync.approve_changerequest",
    ],
    REVENUE_CYCLE: [
        *_GOVERNANCE_READ,
        "healthsync.view_exceptionitem",
        "healthsync.change_exceptionitem",
        "healthsync.work_exceptionitem",
        "healthsync.view_phi",
        "workflows.view_workflowrun",
        "workflows.view_kpis",
    ],
    EXECUTIVE: [
        *_GOVERNANCE_READ,
        "workflows.view_kpis",
        "healthsync.view_connectoralert",
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
        "healthsync.view_syncjobrun",
        "healthsync.view_retentionpolicy",
        "healthsync.change_retentionpolicy",
        "healthsync.view_phi",
        "healthsync.view_canonicalevent",
        "healthsync.view_delivery",
        "healthsync.retry_delivery",
        "healthsync.view_exceptionitem",
        "healthsync.work_exceptionitem",
        "workflows.view_workflowrun",
        "workflows.view_kpis",
        *_GOVERNANCE_AUTHOR,
        # API governance: engineers register the systems that call the API and watch their usage.
        "healthsync.view_apiclient",
        "healthsync.add_apiclient",
        "healthsync.change_apiclient",
        "healthsync.view_connectoralert",
        "healthsync.change_connectoralert",
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
