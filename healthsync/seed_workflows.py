"""Reference configuration the deeper workflows need, on top of `seed_reference_config()`.

Mappings for cancel-discharge (ADT^A13), coding (BAR^P05) and documentation (MDM^T02), their event schemas,
and the ERP operations procure-to-pay, labour allocation, replenishment and cash posting deliver through.
Idempotent like the core seed: what exists is left alone, operations a connector lacks are added.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db import transaction

from healthsync.choices import Direction, Lane, Protocol, SystemKind, Transform
from healthsync.models import Connector, System
from healthsync.seed import rule_spec, seed_mappings, seed_schemas

if TYPE_CHECKING:
    from django.contrib.auth.models import User

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


NEW_HL7_TYPES = ["ADT^A13", "BAR^P05", "MDM^T02"]

ERP_OPERATIONS: dict[str, dict[str, str]] = {
    "post_journal": {"method": "POST", "path": "/journal-entries", "result_field": "document_number"},
    "post_ap_invoice": {"method": "POST", "path": "/ap-invoices", "result_field": "document_number"},
    "post_purchase_order": {"method": "POST", "path": "/purchase-orders", "result_field": "document_number"},
    "post_forecast": {
        "method": "POST",
        "path": "/reimbursement-forecasts",
        "result_field": "document_number",
    },
}


def _encounter_rules() -> list[dict[str, Any]]:
    return [
        rule_spec("encounter_id", "PV1-19.1", required=True, description="Visit number"),
        rule_spec("account_number", "PID-18.1"),
        rule_spec("patient.mrn", "PID-3.1", required=True),
        rule_spec("facility", "PV1-3.4|MSH-4.1"),
    ]


def workflow_mapping_definitions() -> list[dict[str, Any]]:
    """Mapping sets for the message types the deeper workflows read (discharge-to-bill-to-cash, labour)."""
    return [
        {
            "code": "payroll-file-received",
            "name": "Payroll file (labour cost allocation)",
            "protocol": Protocol.FILE,
            "message_type": "payroll_allocation",
            "event_type": "payroll.file_received",
            "rules": [
                rule_spec("event.subject", "ROW-period", required=True, description="Payroll period"),
                rule_spec("rows[].employee_id", "ROW[*]-employee_id"),
                rule_spec("rows[].department", "ROW[*]-department"),
                rule_spec("rows[].period", "ROW[*]-period"),
            ],
        },
        {
            "code": "ehr-adt-a13-discharge-cancelled",
            "name": "EHR cancel discharge",
            "protocol": Protocol.HL7V2,
            "message_type": "ADT^A13",
            "event_type": "encounter.discharge_cancelled",
            "rules": [
                *_encounter_rules(),
                rule_spec("cancelled_at", "EVN-2.1|MSH-7.1", Transform.HL7_DATETIME),
                rule_spec("event.occurred_at", "EVN-2.1|MSH-7.1", Transform.HL7_DATETIME),
            ],
        },
        {
            "code": "rcm-bar-p05-coding",
            "name": "Coding complete (account update)",
            "protocol": Protocol.HL7V2,
            "message_type": "BAR^P05",
            "event_type": "coding.completed",
            "rules": [
                *_encounter_rules(),
                rule_spec("diagnoses[].code", "DG1[*]-3.1", description="ICD-10-CM"),
                rule_spec("diagnoses[].description", "DG1[*]-3.2"),
                rule_spec("diagnoses[].type", "DG1[*]-6.1"),
                rule_spec("procedures[].code", "PR1[*]-3.1", description="ICD-10-PCS or CPT"),
                rule_spec("procedures[].description", "PR1[*]-3.2"),
                rule_spec("procedures[].performed_at", "PR1[*]-5.1", Transform.HL7_DATETIME),
                rule_spec("drg", "DRG-1.1", description="MS-DRG"),
                rule_spec("coded_at", "EVN-2.1|MSH-7.1", Transform.HL7_DATETIME),
                rule_spec("event.occurred_at", "EVN-2.1|MSH-7.1", Transform.HL7_DATETIME),
            ],
        },
        {
            "code": "ehr-mdm-t02-documentation",
            "name": "Documentation signed",
            "protocol": Protocol.HL7V2,
            "message_type": "MDM^T02",
            "event_type": "documentation.completed",
            "rules": [
                *_encounter_rules(),
                rule_spec("document_type", "TXA-2.1", required=True),
                rule_spec("document_id", "TXA-12.1"),
                rule_spec("signed_by", "TXA-22.1"),
                rule_spec("signed_at", "TXA-4.1|EVN-2.1", Transform.HL7_DATETIME),
                rule_spec("event.occurred_at", "TXA-4.1|EVN-2.1|MSH-7.1", Transform.HL7_DATETIME),
            ],
        },
    ]


_STRING = {"type": "string"}
_ENCOUNTER = {
    "encounter_id": {"type": "string", "minLength": 1},
    "account_number": _STRING,
    "facility": _STRING,
    "patient": {"type": "object"},
}


def _schema(title: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": title,
        "type": "object",
        "required": required,
        "properties": {**_ENCOUNTER, **properties},
    }


def workflow_schema_definitions() -> dict[str, dict[str, Any]]:
    coded = {
        "type": "object",
        "required": ["code"],
        "properties": {"code": {"type": "string", "minLength": 1}},
    }
    return {
        "payroll.file_received": {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": "Payroll file received",
            "type": "object",
            "required": ["rows"],
            "properties": {
                "rows": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "object", "required": ["period"], "properties": {"period": _STRING}},
                }
            },
        },
        "encounter.discharge_cancelled": _schema(
            "Discharge cancelled", {"cancelled_at": _STRING}, ["encounter_id"]
        ),
        "coding.completed": _schema(
            "Coding completed",
            {
                "diagnoses": {"type": "array", "minItems": 1, "items": coded},
                "procedures": {"type": "array", "items": coded},
                "drg": _STRING,
                "coded_at": _STRING,
            },
            ["encounter_id", "diagnoses"],
        ),
        "documentation.completed": _schema(
            "Documentation completed",
            {"document_type": {"type": "string", "minLength": 1}, "signed_by": _STRING, "signed_at": _STRING},
            ["encounter_id", "document_type"],
        ),
    }


@transaction.atomic
def seed_workflow_config(*, actor: User | None = None) -> None:
    """Add the workflow mappings, schemas and ERP operations that are missing (the core seed calls this)."""
    seed_schemas(workflow_schema_definitions(), actor=actor)
    seed_mappings(workflow_mapping_definitions(), actor=actor)
    inbound = Connector.objects.filter(code="ehr-adt-mllp").first()
    if inbound is not None:
        accepted = list((inbound.config or {}).get("accepted_types") or [])
        if accepted and any(kind not in accepted for kind in NEW_HL7_TYPES):
            inbound.config = {
                **inbound.config,
                "accepted_types": accepted + [k for k in NEW_HL7_TYPES if k not in accepted],
            }
            inbound.save(update_fields=["config"])
    erp = Connector.objects.filter(code="erp-journals").first()
    if erp is not None:
        operations = dict((erp.config or {}).get("operations") or {})
        missing = {name: spec for name, spec in ERP_OPERATIONS.items() if name not in operations}
        if missing:
            erp.config = {**erp.config, "operations": {**operations, **missing}}
            erp.save(update_fields=["config"])


X12_CLAIMS_CONNECTOR = "rcm-claims-x12"
X12_REMITS_CONNECTOR = "rcm-remits-x12"


def default_rcm_mailbox() -> str:
    """The folder the payer drops 277CA and 835 files into (HEALTHSYNC_RCM_MAILBOX, else var/rcm-mailbox)."""
    from django.conf import settings

    return str(settings.HEALTHSYNC_RCM_MAILBOX or Path(settings.BASE_DIR) / "var" / "rcm-mailbox")


@transaction.atomic
def claims_route_x12(
    *,
    url: str | None = None,
    claim_type: str = "837I",
    mailbox: dict[str, Any] | str | None = None,
    mailbox_secrets: dict[str, str] | None = None,
) -> Connector:
    """Send claims to the RCM as X12 837s: an enabled X12 connector offering submit_claim, the JSON one disabled.

    connector_for_operation() picks the first enabled outbound connector offering an operation, so claims go
    as 837s while this connector is enabled and as JSON once it is disabled and rcm-claims enabled again.
    `url` defaults to the JSON connector's base URL + /x12/837 (the RCM simulator speaks both). The payer's
    answers come back as files: see remits_route_x12 (`mailbox`, `mailbox_secrets`).
    """
    rest = Connector.objects.filter(code="rcm-claims").first()
    if url is None:
        base = str(((rest.config or {}).get("base_url") if rest else "") or "http://127.0.0.1:8101")
        url = base.rstrip("/") + "/x12/837"
    system = rest.system if rest is not None else None
    connector = Connector.objects.filter(code=X12_CLAIMS_CONNECTOR).first()
    config = {
        "transport": "http",
        "url": url,
        "claim_type": claim_type,
        "x12": {"sender_id": "HEALTHSYNC", "receiver_id": "RCMSIM", "usage": "T"},
        # What connector_for_operation looks for; the X12 adapter builds the 837 from the claim payload.
        "operations": {"submit_claim": {"result_field": "batch"}},
    }
    if connector is None:
        assert system is not None, "seed the reference config (rcm-claims) first"
        connector = Connector.objects.create(
            system=system,
            code=X12_CLAIMS_CONNECTOR,
            name="RCM claims (X12 837)",
            direction=Direction.OUTBOUND,
            protocol=Protocol.X12,
            lane=Lane.FINANCIAL,
            config=config,
            is_enabled=True,
        )
    else:
        connector.config = {**(connector.config or {}), **config}
        connector.is_enabled = True
        connector.save()
    if rest is not None and rest.is_enabled:
        rest.is_enabled = False
        rest.save()
    remits_route_x12(source=mailbox, secrets=mailbox_secrets)
    return connector


@transaction.atomic
def remits_route_x12(
    *, source: dict[str, Any] | str | None = None, secrets: dict[str, str] | None = None
) -> Connector:
    """Read the payer's answers (277CA, 835) from its mailbox: an enabled inbound X12 files connector.

    `source` is a folder path or a files location (sftp: its password goes in `secrets`, encrypted, never in
    the config); the default is default_rcm_mailbox(). The files-poll job picks each ready ``*.x12`` file up
    as one message; the pipeline reads it into claim.accepted/rejected/paid/denied and remittance.received
    (connectors.x12.events). A file still being written is left for the next poll (size and time must hold
    still for settle_seconds); a file that is not X12 goes to the error folder with a reason file.
    """
    if source is None or isinstance(source, str):
        source = {"type": "folder", "path": source or default_rcm_mailbox()}
    config = {
        "source": source,
        "pattern": "*.x12",
        "ready": "stable",
        "settle_seconds": 1,
        "archive_dir": "archive",
        "error_dir": "error",
    }
    system = System.objects.filter(code="rcm-main").first()
    assert system is not None, "seed the reference config (rcm-main) first"
    return _inbound_files_connector(
        X12_REMITS_CONNECTOR,
        system,
        "RCM answers (X12 277CA/835 mailbox)",
        Protocol.X12,
        Lane.FINANCIAL,
        config,
        secrets,
    )


def _inbound_files_connector(
    code: str,
    system: System,
    name: str,
    protocol: str,
    lane: str,
    config: dict[str, Any],
    secrets: dict[str, str] | None,
) -> Connector:
    """Create or update an enabled inbound connector that picks files up; its config is merged, not replaced,
    so settings an engineer added in the console survive a reseed."""
    connector = Connector.objects.filter(code=code).first()
    if connector is None:
        connector = Connector(
            system=system, code=code, name=name, direction=Direction.INBOUND, protocol=protocol, lane=lane
        )
    connector.config = {**(connector.config or {}), **config}
    connector.is_enabled = True
    if secrets:
        connector.secrets = secrets
    connector.save()
    return connector


PAYROLL_SYSTEM = "payroll"
PAYROLL_CONNECTOR = "payroll-drop"
# The payroll file as the labour workflow reads it (workflows/labour.py); the payroll system's extra columns
# (facility, hours) are kept in the message but not required.
PAYROLL_LAYOUT: dict[str, Any] = {
    "format": "csv",
    "fields": [
        {"name": "employee_id", "required": True},
        {"name": "department", "required": True},
        {"name": "period", "required": True},
        {"name": "gross_pay", "type": "decimal", "required": True},
        {"name": "employer_taxes", "type": "decimal"},
        {"name": "benefits", "type": "decimal"},
    ],
}


def default_payroll_drop() -> str:
    """The folder payroll files are dropped into when no SFTP server is given (var/payroll-drop)."""
    from django.conf import settings

    return str(Path(settings.BASE_DIR) / "var" / "payroll-drop")


@transaction.atomic
def payroll_route(
    *, source: dict[str, Any] | str | None = None, secrets: dict[str, str] | None = None
) -> Connector:
    """Pick payroll files up from the payroll system's drop: an enabled inbound files connector.

    `source` is a folder path or a files location (sftp: its password goes in `secrets`, encrypted, never in
    the config); the default is default_payroll_drop(). The files-poll job stores each ``*.csv`` as one
    payroll_allocation message, whose mapping emits payroll.file_received; the labour-allocation batch window
    then posts the period's journal. The payroll system writes under a temporary dot-name and renames
    (ready: temp_name), so a file is taken on the first poll that sees it.
    """
    if source is None or isinstance(source, str):
        source = {"type": "folder", "path": source or default_payroll_drop()}
    config = {
        "source": source,
        "pattern": "*.csv",
        "ready": "temp_name",
        "archive_dir": "archive",
        "error_dir": "error",
        "message_type": "payroll_allocation",
        "layout": PAYROLL_LAYOUT,
    }
    system, _ = System.objects.get_or_create(
        code=PAYROLL_SYSTEM, defaults={"name": "Payroll", "kind": SystemKind.SAAS}
    )
    return _inbound_files_connector(
        PAYROLL_CONNECTOR, system, "Payroll files (labour cost)", Protocol.FILE, Lane.BATCH, config, secrets
    )
