"""One handler per kind of governed object: how to serialise it, validate a proposal, and make it live.

The serialised form is the single shape used everywhere: a change request's `before`/`after`, the YAML files
of export_config, and the diff. Adding a governed kind (a workflow SLA, a code table) means adding a handler
here and a value to ChangeKind; the services, the inbox and config-as-code need no change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import timezone

from healthsync.choices import (
    ChangeKind,
    Direction,
    Lane,
    Protocol,
    SystemKind,
    Transform,
    VersionStatus,
)
from healthsync.governance.ownership import writes_errors
from healthsync.governance.runtime import format_duration, parse_duration, step_slas
from healthsync.models import (
    Connector,
    DataOwnership,
    MappingRule,
    MappingSet,
    MappingVersion,
    OwnershipException,
    SampleCase,
    SchemaVersion,
    System,
)
from healthsync.models.governance import CodeTable, WorkflowSla

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from healthsync.models import ChangeRequest
    from workflows.definitions import Workflow

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
RULE_FIELDS = ("target", "source", "transform", "argument", "required", "description")


class ProposalInvalid(Exception):
    """A proposed state cannot become a change request (or cannot be deployed) as written."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class KindHandler:
    """The behaviour of one governed kind."""

    kind: str
    folder: str
    key: Callable[[dict[str, Any]], str]
    current: Callable[[str], dict[str, Any] | None]
    validate: Callable[[dict[str, Any]], list[str]]
    apply: Callable[[ChangeRequest, list[User]], None]
    all_keys: Callable[[], list[str]]


def _require(payload: dict[str, Any], fields: dict[str, type | tuple[type, ...]]) -> list[str]:
    errors = []
    for name, types in fields.items():
        if name not in payload:
            errors.append(f"{name} is required")
        elif not isinstance(payload[name], types) or (isinstance(payload[name], bool) and types is int):
            errors.append(f"{name} has the wrong type")
    return errors


def _choice(payload: dict[str, Any], name: str, choices: Any) -> list[str]:
    value = payload.get(name)
    if value is not None and value not in choices.values:
        return [f"{name} must be one of: {', '.join(choices.values)}"]
    return []


# Systems ----------------------------------------------------------------------------------------------


def _system_state(system: System) -> dict[str, Any]:
    return {
        "code": system.code,
        "name": system.name,
        "kind": system.kind,
        "description": system.description,
        "is_active": system.is_active,
    }


def _system_current(key: str) -> dict[str, Any] | None:
    system = System.objects.filter(code=key).first()
    return _system_state(system) if system else None


def _system_validate(payload: dict[str, Any]) -> list[str]:
    errors = _require(payload, {"code": str, "name": str, "kind": str})
    return errors + _choice(payload, "kind", SystemKind)


def _system_apply(cr: ChangeRequest, approvers: list[User]) -> None:
    data = cr.after
    System.objects.update_or_create(
        code=data["code"],
        defaults={
            "name": data["name"],
            "kind": data["kind"],
            "description": data.get("description", ""),
            "is_active": data.get("is_active", True),
        },
    )


# Connectors -------------------------------------------------------------------------------------------

_CONNECTOR_POLICY = ("retry_max_attempts", "retry_backoff_seconds", "timeout_seconds", "breaker_threshold")


def _connector_state(connector: Connector) -> dict[str, Any]:
    return {
        "code": connector.code,
        "system": connector.system.code,
        "name": connector.name,
        "direction": connector.direction,
        "protocol": connector.protocol,
        "lane": connector.lane,
        "is_enabled": connector.is_enabled,
        "config": connector.config or {},
        "retry_max_attempts": connector.retry_max_attempts,
        "retry_backoff_seconds": float(connector.retry_backoff_seconds),
        "timeout_seconds": float(connector.timeout_seconds),
        "breaker_threshold": connector.breaker_threshold,
    }


def _connector_current(key: str) -> dict[str, Any] | None:
    connector = Connector.objects.select_related("system").filter(code=key).first()
    return _connector_state(connector) if connector else None


def _connector_validate(payload: dict[str, Any]) -> list[str]:
    from healthsync.registry import connector_registry

    errors = _require(
        payload,
        {"code": str, "system": str, "name": str, "direction": str, "protocol": str, "config": dict},
    )
    errors += _choice(payload, "direction", Direction) + _choice(payload, "protocol", Protocol)
    errors += _choice(payload, "lane", Lane)
    if errors:
        return errors
    try:
        adapter = connector_registry.get(payload["protocol"])
    except KeyError:
        return [f"no adapter is registered for {payload['protocol']!r}"]
    errors = [
        f"config: {error}" for error in adapter.validate_config(payload["direction"], payload["config"])
    ]
    operations = payload["config"].get("operations")
    if payload["direction"] == Direction.OUTBOUND and isinstance(operations, dict):
        for name, spec in sorted(operations.items()):
            if isinstance(spec, dict) and "writes" in spec:
                errors += [f"config: operation {name}: {error}" for error in writes_errors(spec["writes"])]
    return errors


def _connector_apply(cr: ChangeRequest, approvers: list[User]) -> None:
    data = cr.after
    system = System.objects.filter(code=data["system"]).first()
    if system is None:
        raise ProposalInvalid([f"system {data['system']!r} does not exist: deploy its change request first"])
    defaults = {
        "system": system,
        "name": data["name"],
        "direction": data["direction"],
        "protocol": data["protocol"],
        "lane": data.get("lane", Lane.CLINICAL),
        "is_enabled": data.get("is_enabled", True),
        "config": data["config"],
        **{name: data[name] for name in _CONNECTOR_POLICY if name in data},
    }
    connector = Connector.objects.filter(code=data["code"]).first() or Connector(code=data["code"])
    for name, value in defaults.items():
        setattr(connector, name, value)
    try:
        connector.clean()
    except ValidationError as exc:
        raise ProposalInvalid(exc.messages) from None
    connector.save()


# Mapping sets -----------------------------------------------------------------------------------------


def rule_state(rule: MappingRule) -> dict[str, Any]:
    return {
        "target": rule.target,
        "source": rule.source,
        "transform": rule.transform or "",
        "argument": rule.argument or {},
        "required": rule.required,
        "description": rule.description,
    }


def _mapping_state(mapping_set: MappingSet) -> dict[str, Any]:
    version = mapping_set.active_version
    rules = list(version.rules.order_by("position", "id")) if version else []
    return {
        "code": mapping_set.code,
        "name": mapping_set.name,
        "protocol": mapping_set.protocol,
        "message_type": mapping_set.message_type,
        "event_type": mapping_set.event_type,
        "description": mapping_set.description,
        "rules": [rule_state(rule) for rule in rules],
    }


def _mapping_current(key: str) -> dict[str, Any] | None:
    mapping_set = MappingSet.objects.select_related("active_version").filter(code=key).first()
    return _mapping_state(mapping_set) if mapping_set else None


def _mapping_validate(payload: dict[str, Any]) -> list[str]:
    errors = _require(
        payload,
        {"code": str, "name": str, "protocol": str, "message_type": str, "event_type": str, "rules": list},
    )
    errors += _choice(payload, "protocol", Protocol)
    if errors:
        return errors
    targets: set[str] = set()
    for index, rule in enumerate(payload["rules"], start=1):
        if not isinstance(rule, dict):
            errors.append(f"rule {index} is not a mapping of fields")
            continue
        target = str(rule.get("target", "")).strip()
        if not target:
            errors.append(f"rule {index}: target is required")
        elif target in targets:
            errors.append(f"rule {index}: target {target} is written by an earlier rule")
        targets.add(target)
        transform = rule.get("transform", "") or ""
        if transform not in Transform.values:
            errors.append(f"rule {index}: unknown transform {transform!r}")
        argument = rule.get("argument", {})
        if not isinstance(argument, dict):
            errors.append(f"rule {index}: argument must be a mapping")
        elif transform == Transform.LOOKUP and not (
            isinstance(argument.get("table"), dict) or isinstance(argument.get("code_table"), str)
        ):
            errors.append(f"rule {index}: a lookup needs a table of codes or the name of a code_table")
        if not str(rule.get("source", "")).strip() and transform not in (Transform.CONCAT, Transform.DEFAULT):
            errors.append(f"rule {index}: a source is required unless the transform is concat or default")
        unknown = set(rule) - set(RULE_FIELDS)
        if unknown:
            errors.append(f"rule {index}: unknown fields {', '.join(sorted(unknown))}")
    if "samples" in payload:
        errors += sample_errors(payload["samples"])
    return errors


def normalise_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule with every field present, in the serialised order."""
    return {
        "target": str(rule.get("target", "")).strip(),
        "source": str(rule.get("source", "") or "").strip(),
        "transform": rule.get("transform", "") or "",
        "argument": rule.get("argument") or {},
        "required": bool(rule.get("required", False)),
        "description": str(rule.get("description", "") or ""),
    }


def _mapping_apply(cr: ChangeRequest, approvers: list[User]) -> None:
    data = cr.after
    mapping_set, _ = MappingSet.objects.select_for_update().get_or_create(
        code=data["code"],
        defaults={
            "name": data["name"],
            "protocol": data["protocol"],
            "message_type": data["message_type"],
            "event_type": data["event_type"],
        },
    )
    for name in ("name", "protocol", "message_type", "event_type", "description"):
        setattr(mapping_set, name, data.get(name, ""))
    now = timezone.now()
    last = mapping_set.versions.order_by("-number").first()
    version = MappingVersion.objects.create(
        mapping_set=mapping_set,
        number=(last.number + 1) if last else 1,
        status=VersionStatus.ACTIVE,
        note=f"CR-{cr.pk}: {cr.title}",
        created_by=cr.author,
        created_at=cr.created_at,
        approved_by=approvers[0] if approvers else None,
        approved_at=cr.decided_at,
        activated_at=now,
    )
    MappingRule.objects.bulk_create(
        MappingRule(version=version, position=position, **normalise_rule(rule))
        for position, rule in enumerate(data["rules"], start=1)
    )
    previous = mapping_set.active_version
    # Messages already mapping keep the version object they loaded; rules of a version never change.
    mapping_set.active_version = version
    mapping_set.save()
    if previous is not None:
        previous.status = VersionStatus.RETIRED
        previous.save(update_fields=["status"])
    if "samples" in data:
        _samples_apply(mapping_set, data["samples"], cr.author)


SAMPLE_FIELDS = ("name", "expect_error", "message", "expected")


def sample_state(case: SampleCase) -> dict[str, Any]:
    return {
        "name": case.name,
        "expect_error": case.expect_error,
        "message": case.message,
        "expected": case.expected or {},
    }


def samples_of(mapping_code: str) -> list[dict[str, Any]]:
    """A mapping set's sample suite in its serialised form, by name."""
    return [
        sample_state(case)
        for case in SampleCase.objects.filter(mapping_set__code=mapping_code).order_by("name")
    ]


def sample_errors(samples: Any) -> list[str]:
    if not isinstance(samples, list):
        return ["samples must be a list of sample cases"]
    errors: list[str] = []
    names: set[str] = set()
    for index, case in enumerate(samples, start=1):
        if not isinstance(case, dict):
            errors.append(f"sample {index} is not a mapping of fields")
            continue
        name = case.get("name")
        if not isinstance(name, str) or not name.strip() or not str(case.get("message") or "").strip():
            errors.append(f"sample {index}: a name and a message are required")
        elif name in names:
            errors.append(f"sample {index}: the name {name} is used twice")
        names.add(str(name))
        if not isinstance(case.get("expected", {}), dict):
            errors.append(f"sample {index}: expected must be a mapping of fields")
        unknown = set(case) - set(SAMPLE_FIELDS)
        if unknown:
            errors.append(f"sample {index}: unknown fields {', '.join(sorted(unknown))}")
    return errors


def _samples_apply(mapping_set: MappingSet, samples: list[dict[str, Any]], author: User) -> None:
    """Make the mapping set's suite exactly `samples` (a change request carrying a suite replaces it)."""
    names = [case["name"] for case in samples]
    mapping_set.samples.exclude(name__in=names).delete()
    for case in samples:
        SampleCase.objects.update_or_create(
            mapping_set=mapping_set,
            name=case["name"],
            defaults={
                "message": case["message"],
                "expected": case.get("expected") or {},
                "expect_error": bool(case.get("expect_error", False)),
                "created_by": author,
            },
        )


# Schema versions --------------------------------------------------------------------------------------


def _schema_state(schema: SchemaVersion) -> dict[str, Any]:
    return {"event_type": schema.event_type, "version": schema.version, "json_schema": schema.json_schema}


def _schema_current(key: str) -> dict[str, Any] | None:
    schema = SchemaVersion.objects.filter(event_type=key, status=VersionStatus.ACTIVE).first()
    return _schema_state(schema) if schema else None


def _schema_validate(payload: dict[str, Any]) -> list[str]:
    errors = _require(payload, {"event_type": str, "version": str, "json_schema": dict})
    if errors:
        return errors
    if not SEMVER.match(payload["version"]):
        errors.append("version must be a semantic version such as 1.2.0")
    try:
        validator = jsonschema.validators.validator_for(
            payload["json_schema"], default=jsonschema.Draft202012Validator
        )
        validator.check_schema(payload["json_schema"])
    except jsonschema.SchemaError as exc:
        errors.append(f"json_schema is not a valid JSON Schema: {exc.message}")
    return errors


def _schema_apply(cr: ChangeRequest, approvers: list[User]) -> None:
    data = cr.after
    existing = SchemaVersion.objects.filter(event_type=data["event_type"], version=data["version"]).first()
    if existing is not None and existing.json_schema != data["json_schema"]:
        raise ProposalInvalid(
            [f"{data['event_type']} {data['version']} already exists with another schema: bump the version"]
        )
    # Retire first: at most one active version per event type is a database constraint.
    SchemaVersion.objects.filter(event_type=data["event_type"], status=VersionStatus.ACTIVE).update(
        status=VersionStatus.RETIRED
    )
    now = timezone.now()
    if existing is None:
        existing = SchemaVersion(event_type=data["event_type"], version=data["version"], created_by=cr.author)
    existing.json_schema = data["json_schema"]
    existing.status = VersionStatus.ACTIVE
    existing.approved_by = approvers[0] if approvers else None
    existing.approved_at = now
    existing.save()


# Data ownership ---------------------------------------------------------------------------------------


def ownership_key(domain: str, field: str) -> str:
    return f"{domain}.{field}" if field else domain


def _split_ownership_key(key: str) -> tuple[str, str]:
    domain, _, field = key.partition(".")
    return domain, field


def _ownership_state(entry: DataOwnership) -> dict[str, Any]:
    return {
        "domain": entry.domain,
        "field": entry.field,
        "system": entry.system.code,
        "steward": entry.steward.get_username() if entry.steward else "",
        "note": entry.note,
    }


def _ownership_current(key: str) -> dict[str, Any] | None:
    domain, field = _split_ownership_key(key)
    entry = (
        DataOwnership.objects.select_related("system", "steward").filter(domain=domain, field=field).first()
    )
    return _ownership_state(entry) if entry else None


def _ownership_validate(payload: dict[str, Any]) -> list[str]:
    errors = _require(payload, {"domain": str, "system": str})
    if not errors and ("." in payload["domain"] or not payload["domain"].strip()):
        errors.append("domain must be a single name such as encounter")
    steward = payload.get("steward") or ""
    if steward and not get_user_model().objects.filter(username=steward).exists():
        errors.append(f"steward {steward!r} is not a user")
    return errors


def _ownership_apply(cr: ChangeRequest, approvers: list[User]) -> None:
    data = cr.after
    system = System.objects.filter(code=data["system"]).first()
    if system is None:
        raise ProposalInvalid([f"system {data['system']!r} does not exist: deploy its change request first"])
    steward = None
    if data.get("steward"):
        steward = get_user_model().objects.filter(username=data["steward"]).first()
        if steward is None:
            raise ProposalInvalid([f"steward {data['steward']!r} is not a user"])
    DataOwnership.objects.update_or_create(
        domain=data["domain"],
        field=data.get("field", ""),
        defaults={"system": system, "steward": steward, "note": data.get("note", "")},
    )


# Ownership exceptions ---------------------------------------------------------------------------------


def _exception_key(payload: dict[str, Any]) -> str:
    return f"{payload['system']}:{ownership_key(payload['domain'], payload.get('field', ''))}"


def _exception_state(entry: OwnershipException) -> dict[str, Any]:
    return {
        "system": entry.system.code,
        "domain": entry.domain,
        "field": entry.field,
        "reason": entry.reason,
        "is_active": entry.is_active,
    }


def _exception_current(key: str) -> dict[str, Any] | None:
    system, _, rest = key.partition(":")
    domain, field = _split_ownership_key(rest)
    entry = (
        OwnershipException.objects.select_related("system")
        .filter(system__code=system, domain=domain, field=field)
        .first()
    )
    return _exception_state(entry) if entry else None


def _exception_validate(payload: dict[str, Any]) -> list[str]:
    return _require(payload, {"system": str, "domain": str, "reason": str})


def _exception_apply(cr: ChangeRequest, approvers: list[User]) -> None:
    data = cr.after
    system = System.objects.filter(code=data["system"]).first()
    if system is None:
        raise ProposalInvalid([f"system {data['system']!r} does not exist"])
    OwnershipException.objects.update_or_create(
        system=system,
        domain=data["domain"],
        field=data.get("field", ""),
        defaults={"reason": data["reason"], "is_active": data.get("is_active", True), "change_request": cr},
    )


# Workflow SLAs ----------------------------------------------------------------------------------------


def _workflow(code: str) -> Workflow | None:
    from workflows.definitions import WORKFLOWS

    return WORKFLOWS.get(code)


def _sla_current(key: str) -> dict[str, Any] | None:
    workflow = _workflow(key)
    if workflow is None:
        return None
    slas = step_slas(workflow)
    return {
        "workflow": workflow.code,
        "slas": {
            name: format_duration(int(sla.total_seconds()) if sla is not None else None)
            for name, sla in slas.items()
        },
    }


def _sla_validate(payload: dict[str, Any]) -> list[str]:
    errors = _require(payload, {"workflow": str, "slas": dict})
    if errors:
        return errors
    workflow = _workflow(payload["workflow"])
    if workflow is None:
        return [f"workflow {payload['workflow']!r} does not exist"]
    names = workflow.step_names
    missing = [name for name in names if name not in payload["slas"]]
    if missing:
        errors.append(f"slas must list every step of {workflow.code}; missing: {', '.join(missing)}")
    for name, value in payload["slas"].items():
        if name not in names:
            errors.append(f"{workflow.code} has no step {name!r}")
            continue
        try:
            parse_duration(value)
        except ValueError as exc:
            errors.append(f"step {name}: {exc}")
    return errors


def _sla_apply(cr: ChangeRequest, approvers: list[User]) -> None:
    data = cr.after
    for step, value in data["slas"].items():
        WorkflowSla.objects.update_or_create(
            workflow=data["workflow"],
            step=step,
            defaults={"sla_seconds": parse_duration(value), "change_request": cr},
        )


def _sla_keys() -> list[str]:
    from workflows.definitions import WORKFLOWS

    return sorted(WORKFLOWS)


# Code tables ------------------------------------------------------------------------------------------

_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _code_table_state(table: CodeTable) -> dict[str, Any]:
    return {
        "code": table.code,
        "name": table.name,
        "description": table.description,
        "entries": dict(table.entries or {}),
    }


def _code_table_current(key: str) -> dict[str, Any] | None:
    table = CodeTable.objects.filter(code=key).first()
    return _code_table_state(table) if table else None


def _code_table_validate(payload: dict[str, Any]) -> list[str]:
    errors = _require(payload, {"code": str, "name": str, "entries": dict})
    if errors:
        return errors
    if not _CODE.match(payload["code"]):
        errors.append("code must be lower-case letters, digits, - and _ (such as patient-class)")
    for source, value in payload["entries"].items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            errors.append(f"entry {source}: the value must be a code or a word")
    return errors


def _code_table_apply(cr: ChangeRequest, approvers: list[User]) -> None:
    data = cr.after
    CodeTable.objects.update_or_create(
        code=data["code"],
        defaults={
            "name": data["name"],
            "description": data.get("description", ""),
            "entries": {str(k): v for k, v in data["entries"].items()},
            "change_request": cr,
        },
    )


HANDLERS: dict[str, KindHandler] = {
    handler.kind: handler
    for handler in (
        KindHandler(
            ChangeKind.SYSTEM,
            "systems",
            lambda p: p["code"],
            _system_current,
            _system_validate,
            _system_apply,
            lambda: list(System.objects.order_by("code").values_list("code", flat=True)),
        ),
        KindHandler(
            ChangeKind.SCHEMA,
            "schemas",
            lambda p: p["event_type"],
            _schema_current,
            _schema_validate,
            _schema_apply,
            lambda: list(
                SchemaVersion.objects.filter(status=VersionStatus.ACTIVE)
                .order_by("event_type")
                .values_list("event_type", flat=True)
            ),
        ),
        KindHandler(
            ChangeKind.OWNERSHIP,
            "ownership",
            lambda p: ownership_key(p["domain"], p.get("field", "")),
            _ownership_current,
            _ownership_validate,
            _ownership_apply,
            lambda: [
                ownership_key(d, f)
                for d, f in DataOwnership.objects.order_by("domain", "field").values_list("domain", "field")
            ],
        ),
        KindHandler(
            ChangeKind.OWNERSHIP_EXCEPTION,
            "ownership-exceptions",
            _exception_key,
            _exception_current,
            _exception_validate,
            _exception_apply,
            lambda: sorted(
                f"{s}:{ownership_key(d, f)}"
                for s, d, f in OwnershipException.objects.values_list("system__code", "domain", "field")
            ),
        ),
        KindHandler(
            ChangeKind.CODE_TABLE,
            "code-tables",
            lambda p: p["code"],
            _code_table_current,
            _code_table_validate,
            _code_table_apply,
            lambda: list(CodeTable.objects.order_by("code").values_list("code", flat=True)),
        ),
        KindHandler(
            ChangeKind.CONNECTOR,
            "connectors",
            lambda p: p["code"],
            _connector_current,
            _connector_validate,
            _connector_apply,
            lambda: list(Connector.objects.order_by("code").values_list("code", flat=True)),
        ),
        KindHandler(
            ChangeKind.MAPPING,
            "mappings",
            lambda p: p["code"],
            _mapping_current,
            _mapping_validate,
            _mapping_apply,
            lambda: list(
                MappingSet.objects.filter(active_version__isnull=False)
                .order_by("code")
                .values_list("code", flat=True)
            ),
        ),
        KindHandler(
            ChangeKind.WORKFLOW_SLA,
            "workflow-slas",
            lambda p: p["workflow"],
            _sla_current,
            _sla_validate,
            _sla_apply,
            _sla_keys,
        ),
    )
}
# Import and deploy order: what a kind refers to comes before it.
KIND_ORDER = list(HANDLERS)


def handler_for(kind: str) -> KindHandler:
    try:
        return HANDLERS[kind]
    except KeyError:
        raise ProposalInvalid([f"unknown kind of change {kind!r}"]) from None


def normalise(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Fill the optional fields so that a proposal and the deployed object serialise identically."""
    data = dict(payload)
    if kind == ChangeKind.MAPPING:
        data.setdefault("description", "")
        data["rules"] = [normalise_rule(rule) for rule in data.get("rules", []) if isinstance(rule, dict)]
        if "samples" in data:
            # Only a change that carries a suite (config as code) has one; absent means "leave it as it is".
            data["samples"] = sorted(
                (
                    {
                        "name": str(case.get("name", "")).strip(),
                        "expect_error": bool(case.get("expect_error", False)),
                        "message": str(case.get("message", "")),
                        "expected": case.get("expected") or {},
                    }
                    for case in data["samples"]
                ),
                key=lambda case: case["name"],
            )
        order = ("code", "name", "protocol", "message_type", "event_type", "description", "rules", "samples")
    elif kind == ChangeKind.SYSTEM:
        data.setdefault("description", "")
        data.setdefault("is_active", True)
        order = ("code", "name", "kind", "description", "is_active")
    elif kind == ChangeKind.CONNECTOR:
        data.setdefault("lane", Lane.CLINICAL)
        data.setdefault("is_enabled", True)
        defaults = {
            "retry_max_attempts": 5,
            "retry_backoff_seconds": 2.0,
            "timeout_seconds": 10.0,
            "breaker_threshold": 5,
        }
        for name, value in defaults.items():
            data.setdefault(name, value)
        for name in ("retry_backoff_seconds", "timeout_seconds"):
            if isinstance(data[name], int | float) and not isinstance(data[name], bool):
                data[name] = float(data[name])
        order = (
            "code",
            "system",
            "name",
            "direction",
            "protocol",
            "lane",
            "is_enabled",
            "config",
            *_CONNECTOR_POLICY,
        )
    elif kind == ChangeKind.OWNERSHIP:
        data.setdefault("field", "")
        data.setdefault("steward", "")
        data.setdefault("note", "")
        order = ("domain", "field", "system", "steward", "note")
    elif kind == ChangeKind.OWNERSHIP_EXCEPTION:
        data.setdefault("field", "")
        data.setdefault("is_active", True)
        order = ("system", "domain", "field", "reason", "is_active")
    elif kind == ChangeKind.WORKFLOW_SLA:
        slas = data.get("slas") or {}
        data["slas"] = {
            str(name): (None if value is None or str(value).strip() == "" else str(value).strip())
            for name, value in slas.items()
        }
        order = ("workflow", "slas")
    elif kind == ChangeKind.CODE_TABLE:
        data.setdefault("description", "")
        data["entries"] = {str(k): v for k, v in (data.get("entries") or {}).items()}
        order = ("code", "name", "description", "entries")
    else:
        order = ("event_type", "version", "json_schema")
    ordered = {name: data[name] for name in order if name in data}
    ordered.update({name: value for name, value in data.items() if name not in ordered})
    return ordered
