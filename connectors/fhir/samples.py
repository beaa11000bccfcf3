"""FHIR R4 sample resources for tests and demos (made-up people, no real data)."""

from __future__ import annotations

import copy
import json
from typing import Any

ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "enc-1001",
    "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "V1001"}],
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "subject": {"reference": "Patient/pat-1", "identifier": {"value": "MRN-77"}},
    "participant": [{"individual": {"identifier": {"value": "1234567893"}, "display": "Dr Ada Quill"}}],
    "period": {"start": "2026-11-20T08:00:00+00:00", "end": "2026-11-24T15:30:00+00:00"},
    "reasonCode": [
        {
            "coding": [
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10", "display": "Hypertension"}
            ]
        },
        {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E119"}]},
    ],
    "hospitalization": {"dischargeDisposition": {"coding": [{"code": "home"}]}},
    "serviceProvider": {"display": "North Campus"},
}

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1",
    "identifier": [{"system": "urn:mrn", "value": "MRN-77"}],
    "name": [{"family": "Rivers", "given": ["Mara"]}],
    "birthDate": "1970-03-02",
}


def encounter(**changes: Any) -> dict[str, Any]:
    resource = copy.deepcopy(ENCOUNTER)
    resource.update(changes)
    return resource


def transaction(*resources: dict[str, Any], bundle_id: str = "tx-1") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{index:08d}-0000-0000-0000-000000000000",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for index, resource in enumerate(resources)
        ],
    }


def raw(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource).encode()
