"""A fast yes/no schema check for the processing hot path, exact for the keywords it knows.

jsonschema walks an instance by creating a validator per property it descends into: on canonical event data
that cost about as much as mapping the message. `compile_check(validator)` turns the validator's schema into
plain nested checks, one per keyword, each written to answer exactly as jsonschema's own keyword function
does (the same `is_type`, the same format checker, `re.search` for patterns). It covers the keywords event
schemas use; a schema with any other keyword (or a boolean subschema, or tuple `items`) gets None, and is
always validated by jsonschema.

The pipeline asks the fast check first; only data it rejects goes through jsonschema, which then names the
failing fields. So bad data is still caught with the same messages, and good data costs a fraction.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from typing import Any

import jsonschema

Check = Callable[[Any], bool]

# Keywords that never fail an instance (annotations); "$id"/"$ref"/"$defs" are not among them on purpose.
_ANNOTATIONS = frozenset({"$schema", "$comment", "title", "description", "examples", "default"})


def compile_check(validator: Any) -> Check | None:
    """A function telling whether an instance is valid against `validator`'s schema; None when not supported."""
    return _compile(validator, validator.schema)


def _is_integer(instance: Any) -> bool:
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())


# The standard type checker of drafts 6 to 2020-12 (jsonschema._types), as plain predicates: asking the
# validator's TypeChecker costs a map look-up and a call per value.
_STANDARD_TYPES: dict[str, Callable[[Any], bool]] = {
    "array": lambda instance: isinstance(instance, list),
    "boolean": lambda instance: isinstance(instance, bool),
    "integer": _is_integer,
    "null": lambda instance: instance is None,
    "number": lambda instance: not isinstance(instance, bool) and isinstance(instance, numbers.Number),
    "object": lambda instance: isinstance(instance, dict),
    "string": lambda instance: isinstance(instance, str),
}


def _type_test(validator: Any) -> Callable[[Any, str], bool]:
    if validator.TYPE_CHECKER is jsonschema.Draft202012Validator.TYPE_CHECKER:
        return lambda instance, name: _STANDARD_TYPES[name](instance)
    return validator.is_type  # type: ignore[no-any-return]


def _compile(validator: Any, schema: Any) -> Check | None:
    if not isinstance(schema, dict):
        return None
    is_type = _type_test(validator)
    checks: list[Check] = []
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        check = _keyword(validator, is_type, schema, keyword, value)
        if check is None:
            return None
        checks.append(check)
    if len(checks) == 1:
        return checks[0]
    return lambda instance: all(check(instance) for check in checks)


def _keyword(
    validator: Any, is_type: Callable[[Any, str], bool], schema: dict, keyword: str, value: Any
) -> Check | None:
    if keyword == "type":
        types = value if isinstance(value, list) else [value]
        if not all(isinstance(name, str) for name in types):
            return None
        if validator.TYPE_CHECKER is jsonschema.Draft202012Validator.TYPE_CHECKER:
            if not all(name in _STANDARD_TYPES for name in types):
                return None
            tests = [_STANDARD_TYPES[name] for name in types]
            if len(tests) == 1:
                return tests[0]
            return lambda instance: any(test(instance) for test in tests)
        return lambda instance: any(is_type(instance, name) for name in types)
    if keyword == "required":
        if not isinstance(value, list):
            return None
        names = list(value)
        return lambda instance: not is_type(instance, "object") or all(name in instance for name in names)
    if keyword == "properties":
        if not isinstance(value, dict):
            return None
        children: dict[str, Check] = {}
        for name, subschema in value.items():
            child = _compile(validator, subschema)
            if child is None:
                return None
            children[name] = child
        items = list(children.items())

        def properties(instance: Any) -> bool:
            if not is_type(instance, "object"):
                return True
            return all(check(instance[name]) for name, check in items if name in instance)

        return properties
    if keyword == "items":
        if "prefixItems" in schema:
            return None
        child = _compile(validator, value)
        if child is None:
            return None
        return lambda instance: not is_type(instance, "array") or all(child(item) for item in instance)
    if keyword == "enum":
        # jsonschema's equal() compares a string with == and never equals a string to a non-string.
        if not isinstance(value, list) or not all(isinstance(each, str) for each in value):
            return None
        allowed = frozenset(value)
        return lambda instance: isinstance(instance, str) and instance in allowed
    if keyword == "format":
        checker = validator.format_checker
        if checker is None or value not in checker.checkers:
            # jsonschema checks nothing for a format its checker does not know.
            return lambda instance: True
        return lambda instance: checker.conforms(instance, value)
    if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        kind = "string" if keyword.endswith("Length") else "array"
        if keyword.startswith("min"):
            return lambda instance: not is_type(instance, kind) or len(instance) >= value
        return lambda instance: not is_type(instance, kind) or len(instance) <= value
    if keyword in ("minimum", "maximum"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if keyword == "minimum":
            return lambda instance: not is_type(instance, "number") or not instance < value
        return lambda instance: not is_type(instance, "number") or not instance > value
    if keyword == "pattern":
        if not isinstance(value, str):
            return None
        try:
            search = re.compile(value).search
        except re.error:
            return None
        return lambda instance: not is_type(instance, "string") or search(instance) is not None
    return None
