"""Reference mapping sets for FHIR R4 Encounters, in the shape of healthsync.seed.mapping_definitions().

An Encounter's message type carries its status (``Encounter/finished``), so a finished encounter becomes
``encounter.discharged`` and an in-progress one ``encounter.admitted``. Sources read the Encounter; on a
transaction Bundle, ``Patient.…`` paths read the Bundle's Patient entry (see connectors/fhir/paths.py).
FHIR dateTimes are already ISO 8601, so no date transform is needed.
"""

from __future__ import annotations

from typing import Any

from healthsync.choices import Protocol, Transform
from healthsync.seed import rule_spec

# v3 ActCode encounter classes → the HL7 v2 patient classes the canonical events use.
PATIENT_CLASS = {"IMP": "I", "ACUTE": "I", "NONAC": "I", "AMB": "O", "OBSENC": "O", "SS": "O", "EMER": "E"}


def _encounter_rules(*, admit_required: bool) -> list[dict[str, Any]]:
    return [
        rule_spec(
            "encounter_id",
            "Encounter.identifier[0].value|Encounter.id",
            required=True,
            description="Visit number (the first identifier, else the resource id)",
        ),
        rule_spec(
            "patient.mrn",
            "Encounter.subject.identifier.value|Patient.identifier[0].value|Encounter.subject.reference",
            required=True,
            description="Medical record number",
        ),
        rule_spec("patient.family_name", "Patient.name[0].family"),
        rule_spec("patient.given_name", "Patient.name[0].given[0]"),
        rule_spec(
            "patient.name",
            "",
            Transform.CONCAT,
            {"sources": ["Patient.name[0].given[0]", "Patient.name[0].family"], "separator": " "},
        ),
        rule_spec("patient.birth_date", "Patient.birthDate"),
        rule_spec(
            "patient_class",
            "Encounter.class.code",
            Transform.LOOKUP,
            {"table": PATIENT_CLASS},
            required=True,
            description="v3 ActCode class as I/O/E",
        ),
        rule_spec("facility", "Encounter.serviceProvider.identifier.value|Encounter.serviceProvider.display"),
        rule_spec("attending.id", "Encounter.participant[0].individual.identifier.value"),
        rule_spec("attending.name", "Encounter.participant[0].individual.display"),
        rule_spec("hospital_service", "Encounter.serviceType.coding[0].code"),
        rule_spec("admitted_at", "Encounter.period.start", required=admit_required),
        rule_spec("diagnoses[].code", "Encounter.reasonCode[*].coding[0].code", description="ICD-10-CM"),
        rule_spec("diagnoses[].description", "Encounter.reasonCode[*].coding[0].display"),
    ]


def fhir_mapping_definitions() -> list[dict[str, Any]]:
    """The FHIR Encounter mapping sets and their version-1 rules (for healthsync.seed)."""
    return [
        {
            "code": "fhir-encounter-finished-discharged",
            "name": "FHIR Encounter finished",
            "protocol": Protocol.FHIR,
            "message_type": "Encounter/finished",
            "event_type": "encounter.discharged",
            "rules": [
                *_encounter_rules(admit_required=False),
                rule_spec("discharged_at", "Encounter.period.end", required=True),
                rule_spec("disposition", "Encounter.hospitalization.dischargeDisposition.coding[0].code"),
                rule_spec("event.occurred_at", "Encounter.period.end"),
            ],
        },
        {
            "code": "fhir-encounter-in-progress-admitted",
            "name": "FHIR Encounter in progress",
            "protocol": Protocol.FHIR,
            "message_type": "Encounter/in-progress",
            "event_type": "encounter.admitted",
            "rules": [
                *_encounter_rules(admit_required=True),
                rule_spec("event.occurred_at", "Encounter.period.start"),
            ],
        },
    ]
