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

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from operator import methodcaller
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from django.conf import settings

from healthsync.choices import Transform
from healthsync.errors import MappingError

if TYPE_CHECKING:
    from healthsync.models import MappingRule, MappingVersion
    from healthsync.registry import ParsedMessage

_HL7_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})")
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
        plan = _plan(rule)
        try:
            value = plan.evaluate(parsed)
        except _RuleProblem as exc:
            problems.append(f"{rule.target}: {exc}")
            continue
        target = plan.target
        if plan.list_path is not None:
            list_path, item_path = plan.list_path, plan.item_path
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
        _set(result.data, plan.keys, value)
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
                    _set(item, item_path.split("."), item_value)
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
            _set(result.data, list_path.split("."), items)
    if missing or problems:
        parts = []
        if missing:
            parts.append("Required fields are missing: " + ", ".join(missing))
        parts.extend(problems)
        raise MappingError("; ".join(parts), missing=missing)
    return result


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _set(data: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


@dataclass(frozen=True)
class _Plan:
    """One rule worked out once: how to read and transform its value, and where the value goes."""

    evaluate: Callable[[ParsedMessage], Value]
    target: str
    keys: tuple[str, ...]  # the target's dotted path, split
    list_path: str | None  # for ``[]`` targets: the list, and the path inside each item
    item_path: str


def _plan(rule: MappingRule) -> _Plan:
    """The rule's plan, kept on the rule until its source, transform, argument or target changes."""
    # Rules live for one batch (pipeline._Config) or one governance test run; the key compares by value, so a
    # rule edited in place, even inside its argument, is worked out again.
    key = (rule.source, rule.transform, rule.argument, rule.target)
    remembered = getattr(rule, "_hs_plan", None)
    if remembered is not None and remembered[0] == key:
        return remembered[1]
    key = copy.deepcopy(key)
    source, transform, argument, target = key
    target = target.strip()
    list_path, item_path = None, ""
    if "[]" in target:
        list_path, _, item_path = target.partition("[]")
        item_path = item_path.lstrip(".")
    plan = _Plan(
        evaluate=_evaluator(
            source, transform or Transform.NONE, argument if isinstance(argument, dict) else {}
        ),
        target=target,
        keys=tuple(target.split(".")),
        list_path=list_path,
        item_path=item_path,
    )
    rule._hs_plan = (key, plan)  # type: ignore[attr-defined]
    return plan


def _evaluator(source: str, transform: str, argument: dict[str, Any]) -> Callable[[ParsedMessage], Value]:
    if transform == Transform.CONCAT:
        return _concat(source, argument)
    read = _source(source)
    convert = _converter(transform, argument, source)

    def evaluate(parsed: ParsedMessage) -> Value:
        value = read(parsed)
        if isinstance(value, list):
            return [convert(item) for item in value]
        return convert(value)

    return evaluate


# How to read a source expression, by expression. Expressions are strings (immutable) and few (one per rule),
# so each is worked out once per process.
_SOURCES: dict[str, Callable[[ParsedMessage], Value]] = {}


def read_source(parsed: ParsedMessage, source: str) -> Value:
    """Read a source expression (see the module docstring): a string, or a list for ``[*]`` paths."""
    return _source(source)(parsed)


def _source(source: str) -> Callable[[ParsedMessage], Value]:
    read = _SOURCES.get(source)
    if read is None:
        read = _fallbacks(
            [_path_reader(path) for path in (p.strip() for p in source.strip().split("|")) if path]
        )
        if len(_SOURCES) > 10000:
            _SOURCES.clear()
        _SOURCES[source] = read
    return read


def _fallbacks(readers: list[Callable[[ParsedMessage], Value]]) -> Callable[[ParsedMessage], Value]:
    """The first path that yields a value wins; with none, the last path's (empty) value."""
    if len(readers) == 1:
        return readers[0]

    def read(parsed: ParsedMessage) -> Value:
        value: Value = ""
        for read_path in readers:
            value = read_path(parsed)
            if not _is_empty(value) and not (isinstance(value, list) and all(v == "" for v in value)):
                return value
        return value

    return read


def _path_reader(path: str) -> Callable[[ParsedMessage], Value]:
    star = _SEGMENT_STAR.match(path)
    fetch: Callable[[ParsedMessage], Value]
    if star:
        seg, rest = star.group("seg"), star.group("rest") or ""
        every = f"{seg}[*]"

        def fetch(parsed: ParsedMessage) -> Value:
            # The segment path without a field reads whole segments: one entry per occurrence, never empty.
            count = len(parsed.get_all(every))
            return [parsed.get(f"{seg}[{index}]{rest}") for index in range(1, count + 1)]

    else:
        fetch = methodcaller("get_all" if "[*]" in path else "get", path)

    def read(parsed: ParsedMessage) -> Value:
        try:
            return fetch(parsed)
        except ValueError:
            raise _RuleProblem(f"{path!r} is not a valid source path") from None

    return read


def _concat(source: str, argument: dict[str, Any]) -> Callable[[ParsedMessage], Value]:
    paths = ([source] if source.strip() else []) + [str(p) for p in argument.get("sources", [])]
    separator = str(argument.get("separator", " "))
    readers = [_source(path) for path in paths]

    def evaluate(parsed: ParsedMessage) -> Value:
        if not readers:
            raise _RuleProblem("concat needs a source or argument.sources")
        parts = [read(parsed) for read in readers]
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

    return evaluate


def _converter(transform: str, argument: dict[str, Any], source: str) -> Callable[[Any], Any]:
    """The transform of one value, its settings read once. Values are stripped; empty values stay empty."""
    if transform == Transform.DEFAULT:
        fallback = argument.get("value", "")

        def default(value: Any) -> Any:
            value = _stripped(value)
            return value if value != "" else fallback

        return default
    if transform in (Transform.NONE, ""):
        return _stripped
    convert = _transform(transform, argument, f" (from {source})" if source else "")

    def apply(value: Any) -> Any:
        value = _stripped(value)
        if value == "":
            return ""
        return convert(value)

    return apply


def _stripped(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _transform(transform: str, argument: dict[str, Any], where: str) -> Callable[[Any], Any]:
    """The transform of one non-empty value; `where` names the source in problems, never the value."""
    if transform == Transform.UPPER:
        return methodcaller("upper")
    if transform == Transform.HL7_DATETIME:

        def hl7_datetime(value: str) -> str:
            parsed = parse_hl7_datetime(value)
            if parsed is None:
                raise _RuleProblem(f"not an HL7 date/time{where}")
            return parsed.isoformat()

        return hl7_datetime
    if transform == Transform.HL7_DATE:

        def hl7_date(value: str) -> str:
            match = _HL7_DATE.match(value)
            if match is None:
                raise _RuleProblem(f"not an HL7 date{where}")
            try:
                return datetime(int(match[1]), int(match[2]), int(match[3])).date().isoformat()
            except ValueError:
                raise _RuleProblem(f"not a valid calendar date{where}") from None

        return hl7_date
    if transform == Transform.DECIMAL:

        def decimal(value: str) -> str:
            try:
                number = Decimal(value)
            except InvalidOperation:
                raise _RuleProblem(f"not a decimal number{where}") from None
            if not number.is_finite():
                raise _RuleProblem(f"not a finite number{where}")
            return str(number)

        return decimal
    if transform == Transform.INTEGER:

        def integer(value: str) -> int:
            try:
                return int(value)
            except ValueError:
                raise _RuleProblem(f"not an integer{where}") from None

        return integer
    if transform == Transform.LOOKUP:

        def lookup(value: str) -> Any:
            # A governed code table is read at each use: it may change while the rule stays the same.
            table = (
                argument["table"] if "table" in argument else _code_table(str(argument.get("code_table", "")))
            )
            if value in table:
                return table[value]
            return argument.get("default", value)

        return lookup
    if transform == Transform.REGEX:

        def regex(value: str) -> str:
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

        return regex

    def unknown(value: str) -> str:
        raise _RuleProblem(f"unknown transform {transform!r}")

    return unknown


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
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if offset:
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes > 59:
            return None
        zone: tzinfo = timezone((1 if offset[0] == "+" else -1) * timedelta(hours=hours, minutes=minutes))
    else:
        zone = ZoneInfo(settings.TIME_ZONE)
    try:
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(fraction.ljust(6, "0")) if fraction else 0,
            tzinfo=zone,
        )
    except ValueError:
        return None
