"""The fast schema check answers exactly as jsonschema does, so skipping jsonschema for data it accepts is safe."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.simulators import hl7_builder
from healthsync.choices import VersionStatus
from healthsync.errors import SchemaInvalid
from healthsync.models import CanonicalEvent, SchemaVersion
from healthsync.pipeline import process_pending, validate_event_data
from healthsync.schemacheck import compile_check
from healthsync.seed import all_schema_definitions, seed_reference_config
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


# Strings that meet or miss the formats, patterns and enums the schemas use.
STRINGS = st.sampled_from(
    [
        "",
        "x",
        "CG",
        "ZZ",
        "I",
        "A" * 11,
        "10",
        "-1.50",
        "1e3",
        "1980-02-14",
        "1980-02-30",
        "2026-01-01T08:30:00+00:00",
    ]
)
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(-3, 3), st.just(2.0), STRINGS, st.text(max_size=4)
)
# Values of a schema's type, and the near misses: booleans are not numbers, 2.0 is an integer but 2.5 is not.
SHAPED_LEAVES: dict[str, st.SearchStrategy[Any]] = {
    "string": STRINGS | st.text(max_size=4),
    "integer": st.integers(-3, 3) | st.sampled_from([2.0, 2.5, True]),
    "number": st.integers(-3, 3) | st.floats(-3, 3) | st.just(False),
    "boolean": st.booleans() | st.just(1),
}
ANY_JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
)


def instances(schema: Any) -> st.SearchStrategy[Any]:
    """Data shaped by the schema, mostly valid, with now and then any JSON value in place of a shaped one."""
    if not isinstance(schema, dict):
        return ANY_JSON
    kinds = schema.get("type", [])
    shapes = [
        SHAPED_LEAVES[kind]
        for kind in (kinds if isinstance(kinds, list) else [kinds])
        if kind in SHAPED_LEAVES
    ]
    if "properties" in schema or "required" in schema:
        properties = {name: instances(sub) for name, sub in schema.get("properties", {}).items()}
        required = {name: properties.get(name, LEAVES) for name in schema.get("required", [])}
        optional = {name: child for name, child in properties.items() if name not in required}
        shapes.append(st.fixed_dictionaries(required, optional=optional))
    if "items" in schema:
        shapes.append(st.lists(instances(schema["items"]), max_size=3))
    if "enum" in schema:
        shapes.append(st.sampled_from(schema["enum"] or [""]))
    if "format" in schema:
        shapes.append(st.sampled_from(["1980-02-14", "1980-02-30", "2026-01-01T08:30:00+00:00", "x"]))
    if "pattern" in schema:
        shapes.append(st.sampled_from(["10", "-1.50", "1e3", "ten", ""]))
    shaped = st.one_of(shapes) if shapes else LEAVES
    return st.integers(0, 19).flatmap(lambda draw: ANY_JSON if draw == 0 else shaped)


@st.composite
def schemas_and_instances(draw: st.DrawFn, schemas: st.SearchStrategy[dict[str, Any]]) -> tuple[dict, Any]:
    schema = draw(schemas)
    return schema, draw(instances(schema))


def _assert_agrees(schema: dict[str, Any], instance: Any) -> None:
    validator = _validator(schema)
    fast = compile_check(validator)
    if fast is not None:
        assert fast(instance) == validator.is_valid(instance)


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(all_schema_definitions().items())).flatmap(
        lambda item: st.tuples(st.just(item[0]), instances(item[1]))
    )
)
def test_the_fast_check_agrees_with_jsonschema_on_random_data_for_every_event_schema(
    case: tuple[str, Any],
) -> None:
    event_type, instance = case
    schema = all_schema_definitions()[event_type]
    assert compile_check(_validator(schema)) is not None, event_type
    _assert_agrees(schema, instance)


TYPES = ["object", "array", "string", "integer", "number", "boolean", "null"]
TYPE_NAMES = st.sampled_from(TYPES)
KEYS = st.sampled_from(["a", "b", "type", "0"])
DIALECT_URIS = [
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2019-09/schema",
    "http://json-schema.org/draft-07/schema#",
    "http://json-schema.org/draft-04/schema#",
    "http://json-schema.org/draft-03/schema#",
]
DIALECTS = st.sampled_from(DIALECT_URIS)
LEAF_KEYWORDS = {
    "type": TYPE_NAMES | st.lists(TYPE_NAMES, max_size=3, unique=True),
    "minLength": st.integers(0, 3),
    "maxLength": st.integers(0, 3),
    "minItems": st.integers(0, 3),
    "maxItems": st.integers(0, 3),
    "minimum": st.integers(-2, 2) | st.floats(-2, 2),
    "maximum": st.integers(-2, 2) | st.floats(-2, 2),
    "pattern": st.sampled_from(["^\\d+$", "^-?\\d+(\\.\\d+)?$", "x", ""]),
    "format": st.sampled_from(["date", "date-time", "email", "ipv4", "uuid", "no-such-format"]),
    "enum": st.lists(STRINGS, max_size=3),
    "title": st.just("t"),
}
# A supported keyword now and then joined by one the fast check must refuse.
REFUSED_KEYWORDS = {
    "not": st.just({}),
    "exclusiveMinimum": st.just(0),
    "prefixItems": st.just([{}]),
    "const": st.just("x"),
}
SUBSCHEMAS = st.recursive(
    st.fixed_dictionaries({}, optional=LEAF_KEYWORDS),
    lambda children: st.fixed_dictionaries(
        {},
        optional={
            **LEAF_KEYWORDS,
            "properties": st.dictionaries(KEYS, children, max_size=3),
            "required": st.lists(KEYS, max_size=3),
            "items": children,
        },
    ),
    max_leaves=6,
)
SCHEMAS = st.builds(
    lambda dialect, schema, refused: {"$schema": dialect, **schema, **refused},
    DIALECTS,
    SUBSCHEMAS,
    st.fixed_dictionaries({}, optional=REFUSED_KEYWORDS) | st.just({}),
)


@settings(max_examples=500)
@given(schemas_and_instances(SCHEMAS))
def test_the_fast_check_agrees_with_jsonschema_on_random_schemas_and_data(case: tuple[dict, Any]) -> None:
    _assert_agrees(*case)


def test_a_keyword_the_validators_draft_reads_otherwise_is_left_to_jsonschema() -> None:
    # Draft 3 ignores a "required" list and reads "required": true inside properties instead.
    draft3 = {"$schema": "http://json-schema.org/draft-03/schema#", "type": "object", "required": ["a"]}
    assert compile_check(_validator(draft3)) is None
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object", "required": ["a"]}
    assert compile_check(_validator(draft4)) is not None


def test_a_schema_nested_deeper_than_python_compiles_is_left_to_jsonschema() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(30):
        schema = {"type": "array", "items": schema}
    assert compile_check(_validator(schema)) is None


# Values on the edges of the standard types: booleans are not numbers, 2.0 is an integer, Decimal is a number.
TYPE_EDGES: list[Any] = [
    True,
    False,
    0,
    1,
    2.0,
    2.5,
    float("nan"),
    float("inf"),
    Decimal("1"),
    "1",
    "",
    None,
    [],
    {},
]


@pytest.mark.parametrize("dialect", DIALECT_URIS)
@pytest.mark.parametrize("kind", TYPES)
def test_the_fast_check_agrees_with_jsonschema_on_each_type_at_its_edges(dialect: str, kind: str) -> None:
    for schema in ({"$schema": dialect, "type": kind}, {"$schema": dialect, "type": [kind, "null"]}):
        for instance in TYPE_EDGES:
            _assert_agrees(schema, instance)
