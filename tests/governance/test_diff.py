from __future__ import annotations

from healthsync.choices import ChangeKind
from healthsync.governance.diff import change_diff, field_diff, rules_diff, schema_diff


def _rule(target, source="", transform=""):
    return {
        "target": target,
        "source": source,
        "transform": transform,
        "argument": {},
        "required": False,
        "description": "",
    }


def test_field_diff_reports_nested_config_changes_by_path():
    before = {"config": {"base_url": "http://a", "operations": {"x": {"path": "/x"}}}, "name": "A"}
    after = {
        "config": {"base_url": "http://b", "operations": {"x": {"path": "/x"}, "y": {"path": "/y"}}},
        "name": "A",
    }
    changes = {c.path: (c.change, c.before, c.after) for c in field_diff(before, after)}
    assert changes == {
        "config.base_url": ("changed", "http://a", "http://b"),
        "config.operations.y.path": ("added", "", "/y"),
    }


def test_rules_diff_goes_rule_by_rule():
    before = [_rule("a", "PID-3.1"), _rule("b", "PV1-2.1"), _rule("c", "PV1-3.1")]
    after = [_rule("b", "PV1-2.1", "upper"), _rule("a", "PID-3.1"), _rule("d", "PV1-4.1")]
    changes = {c.target: c.change for c in rules_diff(before, after)}
    assert changes == {"b": "changed", "a": "moved", "d": "added", "c": "removed"}
    changed = next(c for c in rules_diff(before, after) if c.target == "b")
    assert [(f.path, f.before, f.after) for f in changed.fields] == [("transform", "", "upper")]


SCHEMA = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": {"type": "string"}, "amount": {"type": "string"}, "kind": {"enum": ["A", "B"]}},
}


def test_schema_diff_flags_breaking_changes():
    after = {
        "type": "object",
        "required": ["id", "ward"],
        "properties": {"id": {"type": "integer"}, "ward": {"type": "string"}, "kind": {"enum": ["A"]}},
    }
    changes = {(c.path, c.description): c.breaking for c in schema_diff(SCHEMA, after)}
    assert changes == {
        ("amount", "field removed"): True,
        ("id", "type changes from string to integer"): True,
        ("ward", "new required field"): True,
        ("kind", "allowed values change"): True,
    }


def test_schema_diff_treats_additions_as_compatible():
    after = {
        **SCHEMA,
        "properties": {**SCHEMA["properties"], "note": {"type": "string"}, "kind": {"enum": ["A", "B", "C"]}},
    }
    changes = schema_diff(SCHEMA, after)
    assert [(c.path, c.breaking) for c in changes] == [("kind", False), ("note", False)]
    assert not change_diff(ChangeKind.SCHEMA, {"json_schema": SCHEMA}, {"json_schema": after}).breaking
