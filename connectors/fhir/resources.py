"""Reading and checking inbound FHIR R4B JSON: what is accepted, and an OperationOutcome for what is not.

fhir.resources validates structure and data types but not the required status codes, so `check_resource`
checks them itself. Every problem names where it is as a FHIRPath expression (``Encounter.period.end``,
``Bundle.entry[1].resource.status``) and never quotes the value, because values are PHI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

SUPPORTED_TYPES = ("Encounter", "Patient", "Claim", "ClaimResponse", "ExplanationOfBenefit", "ChargeItem")
_FINANCIAL_STATUS = ("active", "cancelled", "draft", "entered-in-error")
# Required status bindings of R4 (4.0.1); the models accept any code, the standard does not.
STATUS_CODES: dict[str, tuple[str, ...]] = {
    "Encounter": (
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    ),
    "Claim": _FINANCIAL_STATUS,
    "ClaimResponse": _FINANCIAL_STATUS,
    "ExplanationOfBenefit": _FINANCIAL_STATUS,
    "ChargeItem": (
        "planned",
        "billable",
        "not-billable",
        "aborted",
        "billed",
        "entered-in-error",
        "unknown",
    ),
}
BUNDLE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: severity, IssueType code, what is wrong and where."""

    code: str
    diagnostics: str
    expression: str = ""
    severity: str = "error"

    def as_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


@dataclass
class FhirInputError(Exception):
    """Inbound FHIR that cannot be accepted; `status` is 400 (not FHIR at all) or 422 (invalid FHIR)."""

    status: int
    issues: list[Issue]
    resource_type: str = ""
    resource_id: str = ""

    def __str__(self) -> str:
        return "; ".join(
            f"{i.expression}: {i.diagnostics}" if i.expression else i.diagnostics for i in self.issues
        )

    @property
    def message(self) -> str:
        return str(self)


@dataclass
class Checked:
    """An accepted payload: its JSON, its type, its id, and what the message store files it under."""

    data: dict[str, Any]
    resource_type: str
    resource_id: str
    message_type: str
    entries: list[dict[str, Any]] = field(default_factory=list)  # a Bundle's resources, in order
    # A batch Bundle's bad entries by index; the good ones are accepted all the same (a transaction has none).
    entry_issues: dict[int, list[Issue]] = field(default_factory=dict)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue.as_fhir() for issue in issues]}


def message_type_for(data: dict[str, Any]) -> str:
    """``Encounter/finished``, ``Claim``, ``Bundle/transaction``: what mapping sets select on.

    An Encounter carries its status, the way an HL7 ADT message carries its trigger event, so a discharge
    (finished) and an admission (in-progress) map to different canonical events.
    """
    resource_type = str(data.get("resourceType", ""))
    if resource_type == "Encounter" and data.get("status"):
        return f"Encounter/{data['status']}"
    if resource_type == "Bundle":
        return f"Bundle/{data.get('type', '')}"
    return resource_type


def load_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or FhirInputError(400) saying where the JSON breaks."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FhirInputError(
            400, [Issue("structure", f"The body is not UTF-8 text (byte {exc.start}).")]
        ) from None
    except json.JSONDecodeError as exc:
        raise FhirInputError(
            400,
            [
                Issue(
                    "structure",
                    f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
                )
            ],
        ) from None
    if not isinstance(data, dict):
        raise FhirInputError(400, [Issue("structure", "The body must be a JSON object (a FHIR resource).")])
    return data


def _expression(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "class_fhir":
            path += ".class"
        else:
            path += f".{part}"
    return path


def _model_issues(resource_type: str, data: dict[str, Any], prefix: str) -> list[Issue]:
    model = get_fhir_model_class(resource_type)
    try:
        model.model_validate(data)
    except pydantic.ValidationError as exc:
        issues = []
        for error in exc.errors(include_input=False, include_url=False):
            where = _expression(prefix, tuple(error.get("loc", ())))
            kind = error.get("type", "")
            code = (
                "required" if kind == "missing" else ("structure" if kind == "extra_forbidden" else "value")
            )
            # pydantic's own message, cut before any echo of the input.
            text = str(error.get("msg", "invalid")).split("\n")[0][:300]
            issues.append(Issue(code, text, where))
        return issues or [Issue("invalid", f"{resource_type} is not valid FHIR R4B.", prefix)]
    except (ValueError, TypeError) as exc:
        return [Issue("invalid", str(exc).split("\n")[0][:300], prefix)]
    return []


def _status_issues(resource_type: str, data: dict[str, Any], prefix: str) -> list[Issue]:
    allowed = STATUS_CODES.get(resource_type)
    if allowed is None:
        return []
    status = data.get("status")
    if status in (None, ""):
        return [Issue("required", f"{resource_type}.status is required.", f"{prefix}.status")]
    if status not in allowed:
        return [
            Issue(
                "code-invalid",
                f"{resource_type}.status must be one of {', '.join(allowed)}.",
                f"{prefix}.status",
            )
        ]
    return []


def _check_one(data: dict[str, Any], prefix: str) -> list[Issue]:
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return [
            Issue(
                "required",
                "resourceType is required.",
                f"{prefix}.resourceType" if prefix else "resourceType",
            )
        ]
    if resource_type not in SUPPORTED_TYPES:
        return [
            Issue(
                "not-supported",
                f"Resource type {resource_type} is not accepted here; send one of {', '.join(SUPPORTED_TYPES)} "
                "or a transaction Bundle.",
                f"{prefix}.resourceType" if prefix else "resourceType",
            )
        ]
    where = prefix or resource_type
    return _status_issues(resource_type, data, where) + _model_issues(resource_type, data, where)


def check_resource(data: dict[str, Any], *, expected_type: str = "") -> Checked:
    """Accept one resource (of `expected_type` when given) or a transaction Bundle; else FhirInputError."""
    resource_type = str(data.get("resourceType") or "")
    resource_id = str(data.get("id") or "")
    if expected_type and expected_type not in SUPPORTED_TYPES:
        raise FhirInputError(
            400,
            [Issue("not-supported", f"Resource type {expected_type} is not accepted here.", "resourceType")],
            resource_type,
            resource_id,
        )
    if expected_type and resource_type != expected_type:
        raise FhirInputError(
            400,
            [
                Issue(
                    "invalid",
                    f"The URL names {expected_type} but the body is {resource_type or 'missing resourceType'}.",
                    "resourceType",
                )
            ],
            resource_type,
            resource_id,
        )
    if resource_type == "Bundle":
        return _check_bundle(data, resource_id)
    issues = _check_one(data, "")
    if issues:
        status = 400 if issues[0].code == "not-supported" or issues[0].expression == "resourceType" else 422
        raise FhirInputError(status, issues, resource_type, resource_id)
    return Checked(data, resource_type, resource_id, message_type_for(data), [data])


BUNDLE_TYPES = ("transaction", "batch")


def _check_bundle(data: dict[str, Any], resource_id: str) -> Checked:
    """A transaction is accepted whole or not at all; a batch's entries each stand or fall on their own."""
    bundle_type = data.get("type")
    if bundle_type not in BUNDLE_TYPES:
        raise FhirInputError(
            422,
            [
                Issue(
                    "value",
                    "Only transaction and batch Bundles are accepted (Bundle.type = transaction or batch).",
                    "Bundle.type",
                )
            ],
            "Bundle",
            resource_id,
        )
    entries = data.get("entry")
    if not isinstance(entries, list) or not entries:
        raise FhirInputError(
            422,
            [Issue("required", f"A {bundle_type} Bundle needs at least one entry.", "Bundle.entry")],
            "Bundle",
            resource_id,
        )
    by_entry: dict[int, list[Issue]] = {}
    resources: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            by_entry[index] = [Issue("required", "Each entry needs a resource.", f"{where}.resource")]
            resources.append({})
            continue
        issues: list[Issue] = []
        request = entry.get("request")
        if (
            not isinstance(request, dict)
            or request.get("method") not in BUNDLE_METHODS
            or not request.get("url")
        ):
            issues.append(
                Issue(
                    "required",
                    f"Each {bundle_type} entry needs request.method ({', '.join(BUNDLE_METHODS)}) and request.url.",
                    f"{where}.request",
                )
            )
        issues += _check_one(entry["resource"], f"{where}.resource")
        if issues:
            by_entry[index] = issues
        resources.append(entry["resource"])
    if bundle_type == "transaction" and by_entry:
        raise FhirInputError(422, [i for issues in by_entry.values() for i in issues], "Bundle", resource_id)
    # Structure of the Bundle itself (entry.fullUrl, request fields) by the model, resources already done.
    shell = {
        **data,
        "entry": [
            {k: v for k, v in e.items() if k != "resource"}
            for i, e in enumerate(entries)
            if i not in by_entry and isinstance(e, dict)
        ],
    }
    shell_issues = _model_issues("Bundle", shell, "Bundle") if shell["entry"] else []
    if shell_issues:
        raise FhirInputError(422, shell_issues, "Bundle", resource_id)
    return Checked(data, "Bundle", resource_id, message_type_for(data), resources, by_entry)
