"""The mapping test bench and sample suites: run proposed rules on a message without touching live config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from healthsync.choices import ChangeKind, ChangeStatus, VersionStatus
from healthsync.errors import MappingError, SchemaInvalid
from healthsync.governance.kinds import normalise_rule, samples_of
from healthsync.mapping import apply_rules
from healthsync.models import ChangeRequest, MappingRule, SchemaVersion
from healthsync.registry import connector_registry


@dataclass
class FieldRow:
    """One produced field and the rule that produced it."""

    target: str
    value: Any
    rule_position: int
    source: str
    transform: str

    @property
    def display(self) -> str:
        if isinstance(self.value, list):
            return ", ".join("" if item is None else str(item) for item in self.value)
        return "" if self.value is None else str(self.value)


@dataclass
class BenchResult:
    """What one mapping run produced: event data, errors, schema validation and provenance."""

    data: dict[str, Any] | None = None
    envelope: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    missing: list[str] = field(default_factory=list)
    schema_version: str = ""
    schema_errors: list[str] = field(default_factory=list)
    rows: list[FieldRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error and not self.schema_errors


def normalise_message(text: str) -> bytes:
    """A pasted HL7 message: browsers turn segment separators into newlines; HL7 wants CR."""
    lines = [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]
    return "\r".join(lines).encode("utf-8")


def _unsaved_rules(rules: list[dict[str, Any]]) -> list[MappingRule]:
    # The engine reports provenance by rule pk; unsaved rules get their 1-based position as pk.
    return [
        MappingRule(pk=position, position=position, **normalise_rule(rule))
        for position, rule in enumerate(rules, start=1)
    ]


def _value_at(data: dict[str, Any], target: str) -> Any:
    node: Any = data
    for key in target.replace("[]", "").split("."):
        if isinstance(node, list):
            node = [item.get(key) if isinstance(item, dict) else item for item in node] if key else node
        elif isinstance(node, dict):
            node = node.get(key)
        else:
            return None
    return node


def run_rules(
    *,
    protocol: str,
    event_type: str,
    rules: list[dict[str, Any]],
    message: str,
    json_schema: dict[str, Any] | None = None,
    schema_version: str = "",
) -> BenchResult:
    """Parse `message`, apply `rules` and validate against `json_schema` (default: the active schema)."""
    from healthsync.pipeline import validate_event_data

    result = BenchResult()
    try:
        adapter = connector_registry.get(protocol)
    except KeyError:
        result.error = f"No adapter is registered for {protocol!r}."
        return result
    try:
        parsed = adapter.parse(normalise_message(message))
    except Exception as exc:  # any parser error is the sample's fault, shown to the author
        result.error = f"The message cannot be read: {getattr(exc, 'message', None) or exc}"
        return result
    unsaved = _unsaved_rules(rules)
    try:
        mapped = apply_rules(unsaved, parsed)
    except MappingError as exc:
        result.error = exc.message
        result.missing = exc.missing
        return result
    data = mapped.event_data()
    result.data = data
    result.envelope = mapped.envelope
    by_pk = {rule.pk: rule for rule in unsaved}
    for target, pk in mapped.provenance.items():
        rule = by_pk[pk]
        source = "event" if target.startswith("event.") else "data"
        value = _value_at(mapped.envelope if source == "event" else data, target.removeprefix("event."))
        result.rows.append(
            FieldRow(
                target,
                value,
                rule.position,
                rule.source,
                rule.get_transform_display() if rule.transform else "",
            )
        )
    result.rows.sort(key=lambda row: row.rule_position)
    if json_schema is None:
        schema = SchemaVersion.objects.filter(event_type=event_type, status=VersionStatus.ACTIVE).first()
    else:
        schema = SchemaVersion(
            event_type=event_type, version=schema_version or "proposed", json_schema=json_schema
        )
    if schema is None:
        result.schema_errors = [f"No active schema version exists for {event_type}."]
        return result
    result.schema_version = schema.version
    try:
        validate_event_data(schema, data)
    except SchemaInvalid as exc:
        result.schema_errors = exc.errors
    return result


def run_suite(*, mapping_code: str, proposal: dict[str, Any]) -> dict[str, Any]:
    """Run every sample case of a mapping set against proposed rules: {"passed", "cases": [...]}."""
    cases = []
    # A proposal carrying its own suite (imported configuration) is tested against that suite.
    suite = proposal["samples"] if "samples" in proposal else samples_of(mapping_code)
    event_type = proposal.get("event_type", "")
    schema = _proposed_schema(event_type)
    for case in suite:
        outcome = run_rules(
            protocol=proposal.get("protocol", ""),
            event_type=event_type,
            rules=proposal.get("rules", []),
            message=case["message"],
            json_schema=schema.json_schema if schema else None,
            schema_version=schema.version if schema else "",
        )
        if case["expect_error"]:
            passed = bool(outcome.error)
            detail = "" if passed else "expected the mapping to refuse this message, but it produced an event"
        elif outcome.error:
            passed, detail = False, outcome.error
        elif outcome.data != case["expected"]:
            passed = False
            detail = "output differs from expected in: " + ", ".join(
                _differing(case["expected"], outcome.data or {})
            )
        elif outcome.schema_errors:
            passed, detail = False, "schema: " + "; ".join(outcome.schema_errors)
        else:
            passed, detail = True, ""
        cases.append({"name": case["name"], "passed": passed, "detail": detail})
    return {"passed": all(case["passed"] for case in cases), "cases": cases}


def _proposed_schema(event_type: str) -> SchemaVersion | None:
    """For an event type with no active schema yet, the one its pending change request proposes.

    A new mapping set and the schema of its new event type travel together (config imported into an empty
    database): the mapping's suite is checked against the schema the board is reviewing alongside it.
    """
    if SchemaVersion.objects.filter(event_type=event_type, status=VersionStatus.ACTIVE).exists():
        return None
    pending = (
        ChangeRequest.objects.filter(
            kind=ChangeKind.SCHEMA,
            target_key=event_type,
            status__in=[ChangeStatus.SUBMITTED, ChangeStatus.APPROVED],
        )
        .order_by("-id")
        .first()
    )
    if pending is None:
        return None
    return SchemaVersion(
        event_type=event_type,
        version=f"{pending.after.get('version', '')} (proposed in CR-{pending.pk})",
        json_schema=pending.after.get("json_schema") or {},
    )


def _differing(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    # Field names only: values are PHI-shaped even in samples, and names are what the author needs.
    keys = sorted(set(expected) | set(actual))
    return [key for key in keys if expected.get(key) != actual.get(key)]
