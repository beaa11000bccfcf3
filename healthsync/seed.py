"""Reference configuration for the walking skeleton: one EHR, one RCM, one ERP and the discharge-to-bill mappings.

`seed_reference_config()` is idempotent: it creates what is missing and leaves what exists alone, so a mapping
or connector the governance board has since changed is never overwritten by a re-run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from healthsync.choices import Direction, Lane, Protocol, SystemKind, Transform, VersionStatus
from healthsync.models import (
    Connector,
    DataOwnership,
    MappingRule,
    MappingSet,
    MappingVersion,
    SchemaVersion,
    System,
)
from healthsync.registry import reference_config

if TYPE_CHECKING:
    from django.contrib.auth.models import User

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

SYSTEMS = [
    {"code": "ehr-main", "name": "Hospital EHR", "kind": SystemKind.EHR},
    {"code": "rcm-main", "name": "Revenue cycle (RCM)", "kind": SystemKind.RCM},
    {"code": "erp-main", "name": "ERP general ledger", "kind": SystemKind.ERP},
]


def rule_spec(
    target: str,
    source: str = "",
    transform: str = Transform.NONE,
    argument: dict[str, Any] | None = None,
    *,
    required: bool = False,
    description: str = "",
) -> dict[str, Any]:
    return {
        "target": target,
        "source": source,
        "transform": transform,
        "argument": argument or {},
        "required": required,
        "description": description,
    }


def _visit_rules(*, admit_required: bool) -> list[dict[str, Any]]:
    """Rules every ADT message shares: patient, visit, attending, diagnoses and coverage."""
    return [
        rule_spec("encounter_id", "PV1-19.1", required=True, description="Visit number"),
        rule_spec("account_number", "PID-18.1", description="Patient account number"),
        rule_spec("patient.mrn", "PID-3.1", required=True, description="Medical record number"),
        rule_spec("patient.family_name", "PID-5.1"),
        rule_spec("patient.given_name", "PID-5.2"),
        rule_spec(
            "patient.name", "", Transform.CONCAT, {"sources": ["PID-5.2", "PID-5.1"], "separator": " "}
        ),
        rule_spec("patient.birth_date", "PID-7.1", Transform.HL7_DATE),
        rule_spec("patient.sex", "PID-8.1", Transform.UPPER),
        rule_spec("patient_class", "PV1-2.1", Transform.UPPER, required=True, description="I/O/E/P/R/B"),
        rule_spec("facility", "PV1-3.4|MSH-4.1", description="Facility: the visit location, else the sender"),
        rule_spec(
            "location", "", Transform.CONCAT, {"sources": ["PV1-3.1", "PV1-3.2", "PV1-3.3"], "separator": "-"}
        ),
        rule_spec("admission_type", "PV1-4.1"),
        rule_spec("attending.id", "PV1-7.1", description="Attending physician id (NPI)"),
        rule_spec(
            "attending.name", "", Transform.CONCAT, {"sources": ["PV1-7.3", "PV1-7.2"], "separator": " "}
        ),
        rule_spec("hospital_service", "PV1-10.1"),
        rule_spec("financial_class", "PV1-20.1"),
        rule_spec("admitted_at", "PV1-44.1", Transform.HL7_DATETIME, required=admit_required),
        rule_spec("diagnoses[].code", "DG1[*]-3.1", description="ICD-10-CM"),
        rule_spec("diagnoses[].description", "DG1[*]-3.2"),
        rule_spec("diagnoses[].type", "DG1[*]-6.1", description="A admitting, W working, F final"),
        rule_spec("coverage.plan_id", "IN1-2.1"),
        rule_spec("coverage.payer_id", "IN1-3.1"),
        rule_spec("coverage.payer_name", "IN1-4.1"),
        rule_spec("coverage.group_number", "IN1-8.1"),
        rule_spec("coverage.policy_number", "IN1-36.1"),
    ]


def mapping_definitions() -> list[dict[str, Any]]:
    """The reference mapping sets and their version-1 rules."""
    return [
        {
            "code": "ehr-adt-a01-admitted",
            "name": "EHR admission",
            "protocol": Protocol.HL7V2,
            "message_type": "ADT^A01",
            "event_type": "encounter.admitted",
            "rules": [
                *_visit_rules(admit_required=True),
                rule_spec("event.occurred_at", "PV1-44.1|EVN-2.1|MSH-7.1", Transform.HL7_DATETIME),
            ],
        },
        {
            "code": "ehr-adt-a03-discharged",
            "name": "EHR discharge",
            "protocol": Protocol.HL7V2,
            "message_type": "ADT^A03",
            "event_type": "encounter.discharged",
            "rules": [
                *_visit_rules(admit_required=False),
                rule_spec("discharged_at", "PV1-45.1", Transform.HL7_DATETIME, required=True),
                rule_spec("disposition", "PV1-36.1", description="Discharge disposition"),
                rule_spec("event.occurred_at", "PV1-45.1", Transform.HL7_DATETIME),
            ],
        },
        {
            "code": "ehr-dft-p03-charges",
            "name": "EHR charges",
            "protocol": Protocol.HL7V2,
            "message_type": "DFT^P03",
            "event_type": "charge.posted",
            "rules": [
                rule_spec("encounter_id", "PV1-19.1", required=True),
                rule_spec("account_number", "PID-18.1"),
                rule_spec("patient.mrn", "PID-3.1", required=True),
                rule_spec("facility", "PV1-3.4|MSH-4.1"),
                rule_spec("charges[].charge_id", "FT1[*]-2.1", required=True, description="Transaction id"),
                rule_spec("charges[].service_date", "FT1[*]-4.1", Transform.HL7_DATETIME),
                rule_spec("charges[].posted_at", "FT1[*]-5.1", Transform.HL7_DATETIME),
                rule_spec(
                    "charges[].type",
                    "FT1[*]-6.1",
                    Transform.DEFAULT,
                    {"value": "CG"},
                    description="CG charge, CD credit, PY payment, AJ adjustment",
                ),
                rule_spec("charges[].chargemaster_code", "FT1[*]-7.1"),
                rule_spec("charges[].description", "FT1[*]-7.2"),
                rule_spec("charges[].quantity", "FT1[*]-10.1", Transform.DECIMAL),
                rule_spec("charges[].amount", "FT1[*]-11.1", Transform.DECIMAL, required=True),
                rule_spec("charges[].department", "FT1[*]-13.1"),
                rule_spec("charges[].cpt", "FT1[*]-25.1"),
                rule_spec("event.occurred_at", "FT1-5.1|MSH-7.1", Transform.HL7_DATETIME),
            ],
        },
    ]


_STRING = {"type": "string"}
_NONEMPTY = {"type": "string", "minLength": 1}
_DATETIME = {"type": "string", "format": "date-time"}
_DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}
_PATIENT = {
    "type": "object",
    "required": ["mrn"],
    "properties": {
        "mrn": _NONEMPTY,
        "family_name": _STRING,
        "given_name": _STRING,
        "name": _STRING,
        "birth_date": {"type": "string", "format": "date"},
        "sex": _STRING,
    },
}
_ENCOUNTER_PROPERTIES = {
    "encounter_id": _NONEMPTY,
    "account_number": _STRING,
    "patient": _PATIENT,
    "patient_class": {"type": "string", "maxLength": 10},
    "facility": _STRING,
    "location": _STRING,
    "admission_type": _STRING,
    "attending": {"type": "object", "properties": {"id": _STRING, "name": _STRING}},
    "hospital_service": _STRING,
    "financial_class": _STRING,
    "admitted_at": _DATETIME,
    "discharged_at": _DATETIME,
    "disposition": _STRING,
    "diagnoses": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["code"],
            "properties": {"code": _NONEMPTY, "description": _STRING, "type": _STRING},
        },
    },
    "coverage": {
        "type": "object",
        "properties": {
            "plan_id": _STRING,
            "payer_id": _STRING,
            "payer_name": _STRING,
            "group_number": _STRING,
            "policy_number": _STRING,
        },
    },
}


def schema_definitions() -> dict[str, dict[str, Any]]:
    """JSON Schemas (draft 2020-12), version 1.0.0, per canonical event type.

    Coverage and diagnoses are optional on a discharge on purpose: an incomplete account is a business
    exception the discharge-to-bill workflow raises, not a malformed event.
    """
    return {
        "encounter.admitted": {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": "encounter.admitted",
            "type": "object",
            "required": ["encounter_id", "patient", "patient_class", "admitted_at"],
            "properties": _ENCOUNTER_PROPERTIES,
        },
        "encounter.discharged": {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": "encounter.discharged",
            "type": "object",
            "required": ["encounter_id", "patient", "discharged_at"],
            "properties": _ENCOUNTER_PROPERTIES,
        },
        "charge.posted": {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": "charge.posted",
            "type": "object",
            "required": ["encounter_id", "patient", "charges"],
            "properties": {
                "encounter_id": _NONEMPTY,
                "account_number": _STRING,
                "patient": _PATIENT,
                "facility": _STRING,
                "charges": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["charge_id", "amount"],
                        "properties": {
                            "charge_id": _NONEMPTY,
                            "service_date": _DATETIME,
                            "posted_at": _DATETIME,
                            "type": {"enum": ["CG", "CD", "PY", "AJ"]},
                            "chargemaster_code": _STRING,
                            "description": _STRING,
                            "quantity": _DECIMAL,
                            "amount": _DECIMAL,
                            "department": _STRING,
                            "cpt": _STRING,
                        },
                    },
                },
            },
        },
        **{
            event_type: {
                "$schema": JSON_SCHEMA_DIALECT,
                "title": event_type,
                "type": "object",
                "required": ["claim_id"],
                "properties": {
                    "claim_id": _NONEMPTY,
                    "status_code": _STRING,
                    "charge_amount": _DECIMAL,
                    "paid_amount": _DECIMAL,
                    "patient_responsibility": _DECIMAL,
                    "trace_number": _STRING,
                    "payment_date": _STRING,
                    "adjustments": {"type": "array", "items": {"type": "object"}},
                    "reasons": {"type": "array", "items": _STRING},
                },
            }
            for event_type in (
                "claim.submitted",
                "claim.accepted",
                "claim.rejected",
                "claim.paid",
                "claim.denied",
                "claim.reversed",
            )
        },
        "remittance.received": {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": "remittance.received",
            "type": "object",
            "required": ["trace_number", "claim_count"],
            "properties": {
                "trace_number": _NONEMPTY,
                "amount": _DECIMAL,
                "payment_date": _STRING,
                "claim_count": {"type": "integer", "minimum": 0},
                "claims": {"type": "array", "items": _STRING},
            },
        },
    }


def connector_definitions() -> list[dict[str, Any]]:
    rcm_url = getattr(settings, "HEALTHSYNC_RCM_URL", "http://127.0.0.1:8101")
    erp_url = getattr(settings, "HEALTHSYNC_ERP_URL", "http://127.0.0.1:8102")
    return [
        {
            "system": "ehr-main",
            "code": "ehr-adt-mllp",
            "name": "EHR ADT/DFT feed (MLLP)",
            "direction": Direction.INBOUND,
            "protocol": Protocol.HL7V2,
            "lane": Lane.CLINICAL,
            "config": {"port": 2575, "accepted_types": ["ADT^A01", "ADT^A03", "DFT^P03"]},
        },
        {
            "system": "rcm-main",
            "code": "rcm-claims",
            "name": "RCM claims API",
            "direction": Direction.OUTBOUND,
            "protocol": Protocol.REST,
            "lane": Lane.FINANCIAL,
            "config": {
                "base_url": rcm_url,
                "operations": {
                    "submit_claim": {"method": "POST", "path": "/claims", "result_field": "claim_id"}
                },
            },
        },
        {
            "system": "erp-main",
            "code": "erp-journals",
            "name": "ERP journal entries API",
            "direction": Direction.OUTBOUND,
            "protocol": Protocol.REST,
            "lane": Lane.FINANCIAL,
            "config": {
                "base_url": erp_url,
                "operations": {
                    "post_accrual": {
                        "method": "POST",
                        "path": "/journal-entries",
                        "result_field": "document_number",
                    }
                },
            },
        },
    ]


OWNERSHIP = [
    ("encounter", "ehr-main", "The EHR registers and discharges encounters."),
    ("coverage", "ehr-main", "Registration captures insurance in the EHR."),
    ("claim", "rcm-main", "Claims are built and tracked in the revenue-cycle system."),
    ("journal", "erp-main", "The general ledger is the ERP's."),
]


def all_mapping_definitions() -> list[dict[str, Any]]:
    """Every reference mapping set: the skeleton's, the workflows' and those the apps registered."""
    from healthsync.seed_workflows import workflow_mapping_definitions

    return [*mapping_definitions(), *workflow_mapping_definitions(), *reference_config.mappings()]


def all_schema_definitions() -> dict[str, dict[str, Any]]:
    from healthsync.seed_workflows import workflow_schema_definitions

    return {**schema_definitions(), **workflow_schema_definitions(), **reference_config.schemas()}


def seed_schemas(definitions: dict[str, dict[str, Any]], *, actor: User | None = None) -> None:
    """Create version 1.0.0, active, of each event type's schema that has no version yet."""
    now = timezone.now()
    for event_type, schema in definitions.items():
        if not SchemaVersion.objects.filter(event_type=event_type).exists():
            SchemaVersion.objects.create(
                event_type=event_type,
                version="1.0.0",
                json_schema=schema,
                status=VersionStatus.ACTIVE,
                created_by=actor,
                approved_by=actor,
                approved_at=now,
            )


def seed_mappings(specs: list[dict[str, Any]], *, actor: User | None = None) -> None:
    """Create each mapping set that is missing, with an active version 1 holding its rules."""
    now = timezone.now()
    for spec in specs:
        mapping_set, _ = MappingSet.objects.get_or_create(
            code=spec["code"],
            defaults={
                "name": spec["name"],
                "protocol": spec["protocol"],
                "message_type": spec["message_type"],
                "event_type": spec["event_type"],
                "description": "Reference mapping seeded with HealthSync.",
            },
        )
        if mapping_set.versions.exists():
            continue
        version = MappingVersion.objects.create(
            mapping_set=mapping_set,
            number=1,
            status=VersionStatus.ACTIVE,
            note="Reference mapping (seed).",
            created_by=actor,
            approved_by=actor,
            approved_at=now,
            activated_at=now,
        )
        MappingRule.objects.bulk_create(
            MappingRule(version=version, position=position, **rule)
            for position, rule in enumerate(spec["rules"], start=1)
        )
        mapping_set.active_version = version
        mapping_set.save(update_fields=["active_version"])


@transaction.atomic
def seed_reference_config(*, actor: User | None = None) -> None:
    """Create the reference systems, connectors, mappings, schemas and data ownership if they are missing."""
    from healthsync.seed_workflows import seed_workflow_config

    systems = {}
    for spec in SYSTEMS:
        systems[spec["code"]], _ = System.objects.get_or_create(
            code=spec["code"], defaults={"name": spec["name"], "kind": spec["kind"]}
        )
    for spec in connector_definitions():
        spec = dict(spec)
        system = systems[spec.pop("system")]
        code = spec.pop("code")
        Connector.objects.get_or_create(code=code, defaults={"system": system, **spec})
    seed_schemas(all_schema_definitions(), actor=actor)
    seed_mappings(all_mapping_definitions(), actor=actor)
    for domain, system_code, note in OWNERSHIP:
        DataOwnership.objects.get_or_create(
            domain=domain, field="", defaults={"system": systems[system_code], "note": note}
        )
    seed_workflow_config(actor=actor)
