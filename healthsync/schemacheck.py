"""A fast yes/no schema check for the processing hot path, exact for the keywords it knows.

jsonschema walks an instance by creating a validator per property it descends into: on canonical event data
that cost about as much as mapping the message. `compile_check(validator)` writes the validator's schema out as
the source of one plain Python function, straight-line tests that return False at the first failure, and
compiles it once. Each keyword's test is written to answer exactly as jsonschema's own keyword function does
(the same types, the same format functions, `re.search` for patterns), and the keywords are tested in the
schema's order, as jsonschema does. It covers the keywords event schemas use; a schema with any other keyword
(or a boolean subschema, or tuple `items`) gets None, and is always validated by jsonschema.

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

# The standard type checker of drafts 6 to 2020-12 (jsonschema._types) as expressions over a variable: asking
# the validator's TypeChecker costs a map look-up and two calls per value.
_STANDARD_TYPES: dict[str, str] = {
    "array": "isinstance({0}, list)",
    "boolean": "isinstance({0}, bool)",
    "integer": "(not isinstance({0}, bool) and (isinstance({0}, int) or isinstance({0}, float) and {0}.is_integer()))",
    "null": "{0} is None",
    "number": "(not isinstance({0}, bool) and isinstance({0}, Number))",
    "object": "isinstance({0}, dict)",
    "string": "isinstance({0}, str)",
}

# The jsonschema keyword functions this module reproduces: those of drafts 6 to 2020-12. A validator that gives a
# keyword another function (draft 3 ignores a "required" list, draft 4 reads "exclusiveMinimum" in "minimum", a
# custom validator may override anything) is not answered for that keyword.
_REFERENCE_VALIDATORS = (jsonschema.Draft202012Validator.VALIDATORS, jsonschema.Draft7Validator.VALIDATORS)

# The instance type a keyword applies to: jsonschema passes any other instance.
_APPLIES_TO = {
    "required": "object",
    "properties": "object",
    "items": "array",
    "minLength": "string",
    "maxLength": "string",
    "minItems": "array",
    "maxItems": "array",
    "minimum": "number",
    "maximum": "number",
    "pattern": "string",
}


def compile_check(validator: Any) -> Check | None:
    """A function telling whether an instance is valid against `validator`'s schema; None when not supported."""
    source = _Source(validator)
    body = source.schema(validator.schema, "instance")
    if body is None:
        return None
    text = "\n".join(["def check(instance):", *_indent(body), "    return True"])
    try:
        code = compile(text, "<schemacheck>", "exec")
    except (SyntaxError, RecursionError):
        # A schema nested deeper than Python's compiler allows blocks to nest: jsonschema checks it instead.
        return None
    # Only this module's own text is executed: schema values enter as repr() literals or namespace names.
    exec(code, source.namespace)  # noqa: S102
    return source.namespace["check"]  # type: ignore[no-any-return]


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


class _Source:
    """The check's source, written a schema at a time, and the objects (functions, constants) it refers to."""

    def __init__(self, validator: Any) -> None:
        self.validator = validator
        self.standard_types = validator.TYPE_CHECKER is jsonschema.Draft202012Validator.TYPE_CHECKER
        self.namespace: dict[str, Any] = {"Number": numbers.Number, "is_type": validator.is_type}
        self.variables = 0
        self.keywords = frozenset(
            keyword
            for keyword, function in validator.VALIDATORS.items()
            if any(function is reference.get(keyword) for reference in _REFERENCE_VALIDATORS)
        )

    def name_for(self, value: Any) -> str:
        """An expression for `value`: a literal for strings and integers, else a name bound in the namespace."""
        if type(value) is str or type(value) is int:
            return repr(value)
        name = f"k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def new_variable(self) -> str:
        self.variables += 1
        return f"v{self.variables}"

    def type_test(self, variable: str, name: str) -> str:
        if self.standard_types:
            return _STANDARD_TYPES[name].format(variable)
        return f"is_type({variable}, {name!r})"

    def schema(self, schema: Any, variable: str) -> list[str] | None:
        """Statements returning False when `variable` fails `schema`; None for a schema it cannot answer."""
        if not isinstance(schema, dict):
            return None
        lines: list[str] = []
        # The type the "type" keyword has already established, and the type test of the block being extended:
        # keywords that apply to one type share one test of it, and none once "type" has settled it.
        known = None
        open_block = None
        for keyword, value in schema.items():
            if keyword in _ANNOTATIONS:
                continue
            if keyword not in self.keywords:
                return None
            body = self.keyword(keyword, value, variable)
            if body is None:
                return None
            applies_to = _APPLIES_TO.get(keyword)
            if applies_to is None or applies_to == known:
                lines += body
                open_block = None
            elif body:
                if applies_to != open_block:
                    lines.append(f"if {self.type_test(variable, applies_to)}:")
                    open_block = applies_to
                lines += _indent(body)
            if keyword == "type" and isinstance(value, str):
                known = value
        return lines

    def keyword(self, keyword: str, value: Any, variable: str) -> list[str] | None:
        """Statements returning False when `variable` fails one keyword (of the type it applies to)."""
        if keyword == "type":
            names = value if isinstance(value, list) else [value]
            if not all(isinstance(name, str) for name in names):
                return None
            if self.standard_types and not all(name in _STANDARD_TYPES for name in names):
                return None
            if len(names) == 1:
                return [f"if not {self.type_test(variable, names[0])}: return False"]
            test = " or ".join(self.type_test(variable, name) for name in names) or "False"
            return [f"if not ({test}): return False"]
        if keyword == "required":
            if not isinstance(value, list):
                return None
            if not value:
                return []
            missing = " or ".join(f"{self.name_for(name)} not in {variable}" for name in value)
            return [f"if {missing}: return False"]
        if keyword == "properties":
            if not isinstance(value, dict):
                return None
            lines = []
            for name, subschema in value.items():
                child = self.new_variable()
                body = self.schema(subschema, child)
                if body is None:
                    return None
                if body:
                    key = self.name_for(name)
                    lines += [f"if {key} in {variable}:", f"    {child} = {variable}[{key}]", *_indent(body)]
            return lines
        if keyword == "items":
            # Next to "prefixItems" (a keyword this module refuses), "items" would cover only the later items.
            child = self.new_variable()
            body = self.schema(value, child)
            if body is None:
                return None
            return [f"for {child} in {variable}:", *_indent(body)] if body else []
        if keyword == "enum":
            # jsonschema's equal() compares a string with == and never equals a string to a non-string.
            if not isinstance(value, list) or not all(isinstance(each, str) for each in value):
                return None
            allowed = self.name_for(frozenset(value))
            return [f"if not (isinstance({variable}, str) and {variable} in {allowed}): return False"]
        if keyword == "format":
            checker = self.validator.format_checker
            if checker is None or value not in checker.checkers:
                # jsonschema checks nothing for a format its checker does not know.
                return []
            # FormatChecker.conforms without its two calls: the format's function, its expected errors a "no".
            function, raises = checker.checkers[value]
            return [
                "try:",
                f"    if not {self.name_for(function)}({variable}): return False",
                f"except {self.name_for(raises)}:",
                "    return False",
            ]
        if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
            if not isinstance(value, int) or isinstance(value, bool):
                return None
            fails = "<" if keyword.startswith("min") else ">"
            return [f"if len({variable}) {fails} {self.name_for(value)}: return False"]
        if keyword in ("minimum", "maximum"):
            if not isinstance(value, int | float) or isinstance(value, bool):
                return None
            fails = "<" if keyword == "minimum" else ">"
            return [f"if {variable} {fails} {self.name_for(value)}: return False"]
        if keyword == "pattern":
            if not isinstance(value, str):
                return None
            try:
                search = re.compile(value).search
            except re.error:
                return None
            return [f"if {self.name_for(search)}({variable}) is None: return False"]
        return None
