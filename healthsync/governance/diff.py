"""Readable diffs for the board: field by field for configs, rule by rule for mappings, JSON Schema compatibility."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from healthsync.choices import ChangeKind

_MISSING = object()


@dataclass(frozen=True)
class FieldChange:
    """One changed field: its dotted path and the values before and after (rendered as short text)."""

    path: str
    before: str
    after: str
    change: str  # added, removed, changed


@dataclass(frozen=True)
class RuleChange:
    """One mapping rule, keyed by its target: added, removed, changed (with its field changes) or moved."""

    target: str
    change: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    fields: list[FieldChange] = field(default_factory=list)


@dataclass(frozen=True)
class SchemaChange:
    """One difference between two JSON Schemas and whether it breaks consumers of the event."""

    path: str
    description: str
    breaking: bool


@dataclass
class Diff:
    """Everything the review page shows of a change."""

    fields: list[FieldChange] = field(default_factory=list)
    rules: list[RuleChange] = field(default_factory=list)
    schema: list[SchemaChange] = field(default_factory=list)

    @property
    def breaking(self) -> bool:
        return any(change.breaking for change in self.schema)

    @property
    def is_empty(self) -> bool:
        return not (self.fields or self.rules or self.schema)


def _text(value: Any) -> str:
    if value is _MISSING:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key in data:
            out.update(_flatten(data[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def field_diff(
    before: dict[str, Any] | None, after: dict[str, Any] | None, *, skip: tuple[str, ...] = ()
) -> list[FieldChange]:
    """Leaf-by-leaf differences between two nested dicts (lists compare whole)."""
    old = {k: v for k, v in _flatten(before or {}).items() if k.split(".")[0] not in skip}
    new = {k: v for k, v in _flatten(after or {}).items() if k.split(".")[0] not in skip}
    changes = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path, _MISSING), new.get(path, _MISSING)
        if a == b:
            continue
        change = "added" if a is _MISSING else "removed" if b is _MISSING else "changed"
        changes.append(FieldChange(path, _text(a), _text(b), change))
    return changes


def rules_diff(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[RuleChange]:
    """Rule-by-rule differences keyed by target, in the new rule order, removed rules last."""
    old = {rule["target"]: (index, rule) for index, rule in enumerate(before)}
    new = {rule["target"]: (index, rule) for index, rule in enumerate(after)}
    changes = []
    for target, (index, rule) in new.items():
        if target not in old:
            changes.append(RuleChange(target, "added", None, rule))
            continue
        old_index, old_rule = old[target]
        fields = field_diff(old_rule, rule)
        if fields:
            changes.append(RuleChange(target, "changed", old_rule, rule, fields))
        elif old_index != index:
            changes.append(RuleChange(target, "moved", old_rule, rule))
    for target, (_, rule) in old.items():
        if target not in new:
            changes.append(RuleChange(target, "removed", rule, None))
    return changes


def _types(schema: dict[str, Any]) -> set[str]:
    value = schema.get("type")
    if value is None:
        return set()
    return {value} if isinstance(value, str) else set(value)


def schema_diff(before: dict[str, Any] | None, after: dict[str, Any], path: str = "") -> list[SchemaChange]:
    """Compatibility of `after` with data valid under `before`: removed fields, new required ones, type changes."""
    if not before:
        return []
    changes: list[SchemaChange] = []
    label = path or "(event)"
    old_types, new_types = _types(before), _types(after)
    if old_types and new_types and old_types != new_types:
        lost = old_types - new_types
        changes.append(
            SchemaChange(
                label,
                f"type changes from {'/'.join(sorted(old_types))} to {'/'.join(sorted(new_types))}",
                bool(lost) and not ("integer" in lost and "number" in new_types),
            )
        )
    old_enum, new_enum = before.get("enum"), after.get("enum")
    if old_enum != new_enum and (old_enum or new_enum):
        narrowed = new_enum is not None and (
            old_enum is None or not set(map(str, old_enum)) <= set(map(str, new_enum))
        )
        changes.append(SchemaChange(label, "allowed values change", narrowed))
    old_props = before.get("properties") or {}
    new_props = after.get("properties") or {}
    old_required = set(before.get("required") or [])
    new_required = set(after.get("required") or [])
    for name in sorted(set(old_props) | set(new_props)):
        child = f"{path}.{name}" if path else name
        if name not in new_props:
            changes.append(SchemaChange(child, "field removed", True))
        elif name not in old_props:
            required = name in new_required
            changes.append(
                SchemaChange(child, "new required field" if required else "new optional field", required)
            )
        else:
            changes.extend(schema_diff(old_props[name], new_props[name], child))
    for name in sorted(new_required - old_required):
        if name in old_props:
            changes.append(SchemaChange(f"{path}.{name}" if path else name, "field becomes required", True))
    for name in sorted(old_required - new_required):
        if name in new_props:
            changes.append(SchemaChange(f"{path}.{name}" if path else name, "field becomes optional", False))
    old_items, new_items = before.get("items"), after.get("items")
    if isinstance(old_items, dict) and isinstance(new_items, dict):
        changes.extend(schema_diff(old_items, new_items, f"{path}[]"))
    if before.get("additionalProperties", True) is not False and after.get("additionalProperties") is False:
        changes.append(SchemaChange(label, "unknown fields are no longer allowed", True))
    return changes


def change_diff(kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> Diff:
    """The diff of a change request, shaped for its kind."""
    diff = Diff()
    if kind == ChangeKind.MAPPING:
        diff.fields = field_diff(before, after, skip=("rules",))
        diff.rules = rules_diff((before or {}).get("rules", []), after.get("rules", []))
    elif kind == ChangeKind.SCHEMA:
        diff.fields = field_diff(before, after, skip=("json_schema",))
        diff.schema = schema_diff((before or {}).get("json_schema"), after.get("json_schema", {}))
        if before and not diff.schema and before.get("json_schema") != after.get("json_schema"):
            diff.fields += field_diff(before.get("json_schema"), after.get("json_schema"))
    else:
        diff.fields = field_diff(before, after)
    return diff
