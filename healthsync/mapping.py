"""The declarative mapping engine: a mapping version's rules turn a parsed message into canonical event data.

Rules are data, never code. Each `MappingRule` reads a *source*, applies at most one *transform* and writes
the result at a *target*.

Sources
    ``PV1-19.1``            one value (first segment, first repetition), see connectors/hl7v2/reader.py.
    ``PV1-3.4|MSH-4.1``     fallbacks: the first path that yields a non-empty value wins.
    ``DG1[*]-3.1``          one value per DG1 segment, *including empty ones*, so that several rules reading
                            ``DG1[*]-…`` stay aligned index by index (the 2nd code goes with the 2nd type).
    ``PID-3[*].1``          every non-empty repetition of a field (a plain list, not aligned).
    (blank)                 no source: only useful with the ``default`` or ``concat`` transforms.

Targets
    ``encounter_id``                a top-level field.
    ``coverage.plan_id``            dots nest objects: {"coverage": {"plan_id": …}}.
    ``diagnoses[].code``            ``[]`` builds a list of objects index by index from a list source:
                                    DG1[*]-3.1 → diagnoses[0].code, diagnoses[1].code, … Objects whose fields are
                                    all empty are dropped.
    ``aliases[]``                   a plain list of values.
    ``event.occurred_at``           targets under ``event.`` feed the event envelope (subject, occurred_at,
                                    facility, correlation.*) instead of the event data; the pipeline reads them.

Transforms (MappingRule.transform, settings in MappingRule.argument)
    hl7_datetime   HL7 TS (YYYY[MM[DD[HH[MM[SS[.S]]]]]][±ZZZZ]) → ISO 8601 with offset; a TS without offset is
                   local time in settings.TIME_ZONE.
    hl7_date       HL7 DT/TS → ISO date (YYYY-MM-DD).
    decimal        a decimal number, written as a string so that cents stay exact ("1250.00").
    integer        an integer.
    upper          upper case.
    lookup         {"table": {"I": "inpatient"}, "default": "other"}: codes missing from the table become
                   "default" when given, and pass through unchanged otherwise.
    default        {"value": "SELF"}: used when the source is empty.
    regex          {"pattern": "^(\\d+)", "group": 1}: the group of the first match; no match is empty.
    concat         {"sources": ["PID-5.2", "PID-5.1"], "separator": " "}: the rule's own source (if any)
                   followed by these paths, empty parts skipped. Works element-wise on ``[*]`` sources.

Empty optional values are left out of the data rather than written as null. A required rule with no value
(for ``[]`` targets: no items, or an item without the value) raises MappingError(missing=[targets]); a value a
transform cannot read (a date that is not a date) raises MappingError naming the target and the source path,
never the value itself, because values are PHI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from django.conf import settings

from healthsync.choices import Transform
from healthsync.errors import MappingError

if TYPE_CHECKING:
    from healthsync.models import MappingRule, MappingVersion
    from healthsync.registry import ParsedMessage

_SEGMENT_STAR = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})\[\*\](?P<rest>-.*)?$")
_HL7_TS = re.compile(
    r"^(?P<year>\d{4})(?P<month>\d{2})?(?P<day>\d{2})?(?P<hour>\d{2})?(?P<minute>\d{2})?(?P<second>\d{2})?"
    r"(?:\.(?P<fraction>\d{1,4}))?(?P<offset>[+-]\d{4})?$"
)

Value = str | list[str]


@dataclass
class MappingResult:
    """Canonical event data built by one mapping version, and which rule produced each target."""

    data: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, int] = field(default_factory=dict)

    @property
    def envelope(self) -> dict[str, Any]:
        """The ``event.*`` targets: overrides for the event envelope."""
        return self.data.get("event", {})

    def event_data(self) -> dict[str, Any]:
        """The data without the envelope part: what the schema validates and the event stores."""
        return {key: value for key, value in self.data.items() if key != "event"}


class _RuleProblem(Exception):
    """A value one rule could not read; collected so one MappingError names every bad field."""


def apply_mapping(version: MappingVersion, parsed: ParsedMessage) -> MappingResult:
    """Apply every rule of `version` to `parsed`; raise MappingError when required data is missing or bad."""
    rules = list(version.rules.all().order_by("position", "id"))
    return apply_rules(rules, parsed)


def apply_rules(rules: list[MappingRule], parsed: ParsedMessage) -> MappingResult:
    """Apply unsaved or saved rules (the governance UI tests drafts with this before they are approved)."""
    result = MappingResult()
    missing: list[str] = []
    problems: list[str] = []
    # List targets are assembled per list before being written, so items stay aligned across rules.
    lists: dict[str, list[dict[str, Any]]] = {}
    list_required: dict[str, list[tuple[str, str]]] = {}
    for rule in rules:
        try:
            value = _evaluate(rule, parsed)
        except _RuleProblem as exc:
            problems.append(f"{rule.target}: {exc}")
            continue
        target = rule.target.strip()
        if "[]" in target:
            list_path, _, item_path = target.partition("[]")
            item_path = item_path.lstrip(".")
            values = value if isinstance(value, list) else ([value] if value != "" else [])
            items = lists.setdefault(list_path, [])
            while len(items) < len(values):
                items.append({})
            for index, item_value in enumerate(values):
                items[index][item_path] = item_value
            if rule.required:
                list_required.setdefault(list_path, []).append((item_path, target))
            result.provenance[target] = rule.pk
            continue
        if _is_empty(value):
            if rule.required:
                missing.append(target)
            continue
        _set(result.data, target, value)
        result.provenance[target] = rule.pk
    for list_path, raw_items in lists.items():
        items = []
        for raw in raw_items:
            item: dict[str, Any] = {}
            scalar: Any = None
            for item_path, item_value in raw.items():
                if _is_empty(item_value):
                    continue
                if item_path:
                    _set(item, item_path, item_value)
                else:
                    scalar = item_value
            if scalar is not None:
                items.append(scalar)
            elif item:
                items.append(item)
        for item_path, target in list_required.get(list_path, []):
            if not items:
                missing.append(target)
                break
            for index, raw in enumerate(raw_items):
                if _is_empty(raw.get(item_path, "")):
                    missing.append(target.replace("[]", f"[{index}]", 1))
        if items:
            _set(result.data, list_path, items)
    if missing or problems:
        parts = []
        if missing:
            parts.append("Required fields are missing: " + ", ".join(missing))
        parts.extend(problems)
        raise MappingError("; ".join(parts), missing=missing)
    return result


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


# How to read each path of a source expression, by expression: (path, kind, segment, rest) per alternative.
# Expressions are strings (immutable) and few (one per rule), so the plan is worked out once per process.
_PLANS: dict[str, tuple[tuple[str, int, str, str], ...]] = {}
_PLAIN, _ALL, _PER_SEGMENT = 0, 1, 2


def _plan(source: str) -> tuple[tuple[str, int, str, str], ...]:
    plan = _PLANS.get(source)
    if plan is None:
        steps = []
        for path in (part.strip() for part in source.strip().split("|")):
            if not path:
                continue
            star = _SEGMENT_STAR.match(path)
            if star:
                steps.append((path, _PER_SEGMENT, star.group("seg"), star.group("rest") or ""))
            else:
                steps.append((path, _ALL if "[*]" in path else _PLAIN, "", ""))
        plan = tuple(steps)
        if len(_PLANS) > 10000:
            _PLANS.clear()
        _PLANS[source] = plan
    return plan


def read_source(parsed: ParsedMessage, source: str) -> Value:
    """Read a source expression (see the module docstring): a string, or a list for ``[*]`` paths."""
    value: Value = ""
    for step in _plan(source):
        value = _read_path(parsed, step)
        if not _is_empty(value) and not (isinstance(value, list) and all(v == "" for v in value)):
            return value
    return value


def _read_path(parsed: ParsedMessage, step: tuple[str, int, str, str]) -> Value:
    path, kind, seg, rest = step
    try:
        if kind == _PER_SEGMENT:
            # The segment path without a field reads whole segments: one entry per occurrence, never empty.
            count = len(parsed.get_all(f"{seg}[*]"))
            return [parsed.get(f"{seg}[{index}]{rest}") for index in range(1, count + 1)]
        if kind == _ALL:
            return parsed.get_all(path)
        return parsed.get(path)
    except ValueError:
        raise _RuleProblem(f"{path!r} is not a valid source path") from None


def _evaluate(rule: MappingRule, parsed: ParsedMessage) -> Value:
    argument = rule.argument if isinstance(rule.argument, dict) else {}
    transform = rule.transform or Transform.NONE
    if transform == Transform.CONCAT:
        return _concat(rule.source, argument, parsed)
    value = read_source(parsed, rule.source)
    if isinstance(value, list):
        return [_transform(transform, item, argument, rule.source) for item in value]
    return _transform(transform, value, argument, rule.source)


def _concat(source: str, argument: dict[str, Any], parsed: ParsedMessage) -> Value:
    paths = ([source] if source.strip() else []) + [str(p) for p in argument.get("sources", [])]
    if not paths:
        raise _RuleProblem("concat needs a source or argument.sources")
    separator = str(argument.get("separator", " "))
    parts = [read_source(parsed, path) for path in paths]
    length = max((len(p) for p in parts if isinstance(p, list)), default=None)
    if length is None:
        return separator.join(p for p in parts if p)  # type: ignore[misc]
    out = []
    for index in range(length):
        pieces = []
        for part in parts:
            piece = (part[index] if index < len(part) else "") if isinstance(part, list) else part
            if piece:
                pieces.append(piece)
        out.append(separator.join(pieces))
    return out


def _transform(transform: str, value: str, argument: dict[str, Any], source: str) -> str:
    value = value.strip() if isinstance(value, str) else value
    if transform == Transform.DEFAULT:
        return value if value != "" else argument.get("value", "")
    if value == "":
        return ""
    where = f" (from {source})" if source else ""
    if transform in (Transform.NONE, ""):
        return value
    if transform == Transform.UPPER:
        return value.upper()
    if transform == Transform.HL7_DATETIME:
        parsed = parse_hl7_datetime(value)
        if parsed is None:
            raise _RuleProblem(f"not an HL7 date/time{where}")
        return parsed.isoformat()
    if transform == Transform.HL7_DATE:
        match = re.match(r"^(\d{4})(\d{2})(\d{2})", value)
        if match is None:
            raise _RuleProblem(f"not an HL7 date{where}")
        try:
            return datetime(int(match[1]), int(match[2]), int(match[3])).date().isoformat()
        except ValueError:
            raise _RuleProblem(f"not a valid calendar date{where}") from None
    if transform == Transform.DECIMAL:
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise _RuleProblem(f"not a decimal number{where}") from None
        if not number.is_finite():
            raise _RuleProblem(f"not a finite number{where}")
        return str(number)
    if transform == Transform.INTEGER:
        try:
            return int(value)  # type: ignore[return-value]
        except ValueError:
            raise _RuleProblem(f"not an integer{where}") from None
    if transform == Transform.LOOKUP:
        table = argument["table"] if "table" in argument else _code_table(str(argument.get("code_table", "")))
        if value in table:
            return table[value]
        return argument.get("default", value)
    if transform == Transform.REGEX:
        try:
            match = re.search(str(argument.get("pattern", "")), value)
        except re.error as exc:
            raise _RuleProblem(f"the regex pattern is invalid: {exc}") from None
        if match is None:
            return ""
        try:
            return match.group(int(argument.get("group", 0)))
        except (IndexError, ValueError):
            raise _RuleProblem("the regex group does not exist in the pattern") from None
    raise _RuleProblem(f"unknown transform {transform!r}")


def _code_table(code: str) -> dict[str, Any]:
    from healthsync.governance.runtime import code_table  # governed code tables (kind code_table)

    table = code_table(code)
    if table is None:
        raise _RuleProblem(f"the code table {code!r} does not exist")
    return table


def parse_hl7_datetime(value: str) -> datetime | None:
    """An aware datetime from an HL7 TS/DTM; naive values are local time in settings.TIME_ZONE."""
    match = _HL7_TS.match(value.strip())
    if match is None:
        return None
    parts = match.groupdict()
    fraction = parts["fraction"] or ""
    try:
        moment = datetime(
            int(parts["year"]),
            int(parts["month"] or 1),
            int(parts["day"] or 1),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            int(fraction.ljust(6, "0")) if fraction else 0,
        )
    except ValueError:
        return None
    offset = parts["offset"]
    if offset:
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes > 59:
            return None
        return moment.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    return moment.replace(tzinfo=ZoneInfo(settings.TIME_ZONE))
