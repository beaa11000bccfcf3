"""The fast schema check answers exactly as jsonschema does, so skipping jsonschema for data it accepts is safe."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from connectors.simulators import hl7_builder
from healthsync.choices import VersionStatus
from healthsync.errors import SchemaInvalid
from healthsync.models import CanonicalEvent, SchemaVersion
from healthsync.pipeline import process_pending, validate_event_data
from healthsync.schemacheck import compile_check
from healthsync.seed import seed_reference_config
from tests.pipeline_support import store

pytestmark = pytest.mark.django_db

# Values each leaf is replaced with: wrong types, empties, bad formats and numbers that match or miss patterns.
REPLACEMENTS: list[Any] = [
    "",
    "x",
    "2026-13-45",
    "2026-01-01",
    "2026-01-01T08:30:00+00:00",
    "-1.5",
    "1e3",
    5,
    2.0,
    -1,
    0,
    2.5,
    True,
    None,
    [],
    {},
    ["CG"],
    "CG",
    "ZZ",
    "A" * 11,
]


def _validator(schema: dict[str, Any]) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _variants(data: Any) -> Iterator[Any]:
    """The data itself, then one change at a time: each leaf replaced, each key removed, each list emptied."""
    yield data
    for path in _paths(data):
        for replacement in REPLACEMENTS:
            changed = copy.deepcopy(data)
            _put(changed, path, replacement)
            yield changed
        changed = copy.deepcopy(data)
        _drop(changed, path)
        yield changed


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


def _put(node: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _drop(node: Any, path: tuple) -> None:
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


def test_the_fast_check_agrees_with_jsonschema_on_every_seeded_schema_and_mutation() -> None:
    seed_reference_config()
    for raw in (hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03(), hl7_builder.adt_a13()):
        store(raw)
    process_pending()
    samples = {event.type: event.data for event in CanonicalEvent.objects.all()}
    schemas = SchemaVersion.objects.filter(status=VersionStatus.ACTIVE)
    assert {"encounter.admitted", "charge.posted", "encounter.discharged"} <= set(samples)
    compared = 0
    for schema in schemas:
        validator = _validator(schema.json_schema)
        fast = compile_check(validator)
        assert fast is not None, f"{schema.event_type} uses a keyword the fast check does not know"
        for data in _variants(samples.get(schema.event_type, {})):
            assert fast(data) == validator.is_valid(data), (schema.event_type, data)
            compared += 1
    assert compared > 1000


def test_a_schema_with_a_keyword_it_does_not_know_is_left_to_jsonschema() -> None:
    for schema in (
        {"type": "object", "anyOf": [{"required": ["a"]}, {"required": ["b"]}]},
        {"type": "object", "properties": {"a": True}},
        {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}},
        {"enum": [1, "1"]},
        {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
    ):
        assert compile_check(_validator(schema)) is None, schema


def test_data_the_fast_check_rejects_still_gets_jsonschemas_field_errors() -> None:
    schema = SchemaVersion(
        event_type="t",
        version="1",
        json_schema={
            "type": "object",
            "required": ["encounter_id", "charges"],
            "properties": {
                "encounter_id": {"type": "string", "minLength": 1},
                "charges": {"type": "array", "items": {"properties": {"amount": {"pattern": "^\\d+$"}}}},
                "admitted_at": {"type": "string", "format": "date"},
            },
        },
    )
    validate_event_data(schema, {"encounter_id": "V1", "charges": [{"amount": "10"}]})

    with pytest.raises(SchemaInvalid) as caught:
        validate_event_data(schema, {"charges": [{"amount": "ten"}], "admitted_at": "yesterday"})

    assert caught.value.errors == [
        "encounter_id is required",
        "admitted_at is not a valid date",
        "charges.0.amount fails the pattern rule",
    ]
