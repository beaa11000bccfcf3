"""A small FHIRPath-like reader over a resource's JSON, for mapping sources.

Paths are dotted element names with optional list indexes:

    ``Encounter.identifier[0].value``   a leading resource type is optional (``identifier[0].value`` is the same)
    ``period.end``                      an element that is a list without an index reads its first item
    ``hospitalization.dischargeDisposition.coding[0].code``
    ``diagnosis[*].condition.display``  ``[*]`` (get_all only) gives one value per item, "" where the item
                                        lacks the rest of the path, so several rules stay aligned
    ``identifier.where(system='urn:mrn').value``   the one filter FHIRPath users reach for most

On a Bundle, a path that starts with another resource type (``Patient.identifier[0].value``) reads the first
entry holding that type, so one mapping can combine a transaction's Encounter and Patient. Missing elements
read as "" (never an error); booleans read as "true"/"false"; objects read as their JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_STEP = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\*|\d+)\])?"
    r"(?:\.where\((?P<wkey>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*'(?P<wval>[^']*)'\))?$"
)
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")


@dataclass(frozen=True)
class _Step:
    name: str
    index: int | None  # None: first item of a list (or the value itself); -1: every item
    where: tuple[str, str] | None = None


def _split(path: str) -> list[str]:
    # Dots inside a where(...) filter's quoted value must not split the path.
    parts, depth, current = [], 0, ""
    for char in path:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_path(path: str) -> list[_Step]:
    """The steps of `path`; raises ValueError naming the bad step."""
    path = path.strip()
    if not path:
        raise ValueError("empty path")
    steps: list[_Step] = []
    raw_parts = _split(path)
    # A where() filter is written as its own dotted part: fold it into the step before.
    merged: list[str] = []
    for part in raw_parts:
        if part.startswith("where(") and merged:
            merged[-1] = f"{merged[-1]}.{part}"
        else:
            merged.append(part)
    for part in merged:
        match = _STEP.match(part)
        if match is None:
            raise ValueError(f"{part!r} is not a valid step of {path!r}")
        index = match.group("index")
        where = (match.group("wkey"), match.group("wval")) if match.group("wkey") else None
        steps.append(
            _Step(match.group("name"), None if index is None else (-1 if index == "*" else int(index)), where)
        )
    return steps


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


@dataclass
class FhirPathReader:
    """Reads simple paths from one resource (a dict as parsed from JSON); see the module docstring."""

    resource: dict[str, Any]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType", ""))

    def _root(self, steps: list[_Step]) -> tuple[Any, list[_Step]]:
        first = steps[0]
        if first.index is None and first.where is None and _RESOURCE_TYPE.match(first.name):
            if first.name == self.resource_type:
                return self.resource, steps[1:]
            if self.resource_type == "Bundle":
                for entry in self.resource.get("entry") or []:
                    resource = entry.get("resource") if isinstance(entry, dict) else None
                    if isinstance(resource, dict) and resource.get("resourceType") == first.name:
                        return resource, steps[1:]
                return None, []
            # Another resource type on a single resource: nothing there.
            return None, []
        return self.resource, steps

    def _walk(self, node: Any, steps: list[_Step], *, expand: bool) -> list[Any]:
        """Values at the end of `steps`; with `expand`, one per item of every [*] (None where missing)."""
        if not steps:
            return [node]
        if not isinstance(node, dict):
            return [None]
        step, rest = steps[0], steps[1:]
        value = node.get(step.name)
        items = value if isinstance(value, list) else ([] if value is None else [value])
        if step.where is not None:
            key, wanted = step.where
            items = [item for item in items if isinstance(item, dict) and _text(item.get(key)) == wanted]
        if step.index == -1:
            if not expand:
                raise ValueError("[*] reads several values: use it in a list source")
            out: list[Any] = []
            for item in items:
                out.extend(self._walk(item, rest, expand=True))
            return out
        position = step.index or 0
        if position >= len(items):
            # Missing under a [*] item still yields one empty value, unless a later [*] would have many.
            return [] if expand and any(s.index == -1 for s in rest) else [None]
        return self._walk(items[position], rest, expand=expand)

    def get(self, path: str) -> str:
        """One value: the first match, or "" when the element is missing."""
        steps = parse_path(path)
        root, steps = self._root(steps)
        if root is None:
            return ""
        values = self._walk(root, steps, expand=False)
        return _text(values[0]) if values else ""

    def get_all(self, path: str) -> list[str]:
        """One value per item of each ``[*]`` in `path` ("" where an item lacks the rest of the path)."""
        steps = parse_path(path)
        root, steps = self._root(steps)
        if root is None:
            return []
        if not any(step.index == -1 for step in steps):
            value = self.get(path)
            return [value] if value else []
        return [_text(value) for value in self._walk(root, steps, expand=True)]
