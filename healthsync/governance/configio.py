"""Config as code: governed configuration to readable YAML files and back, as change requests.

Layout: <dir>/<kind folder>/<key>.yaml, one object per file, fields in a fixed order, so a Git diff of two exports shows
exactly what changed; <dir>/samples/<mapping code>.yaml holds each mapping set's sample suite (a changed suite is
imported as part of its mapping set's change request). Import never writes live configuration: each file that differs from what is live becomes
a change request (submitted unless asked otherwise), which the board reviews like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from django.db import transaction

from healthsync.choices import ChangeKind
from healthsync.governance import services
from healthsync.governance.kinds import (
    HANDLERS,
    KIND_ORDER,
    ProposalInvalid,
    normalise,
    sample_errors,
    samples_of,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from healthsync.models import ChangeRequest

SAMPLES_FOLDER = "samples"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


def _filename(key: str) -> str:
    # Keys are codes, event types and domain.field names; ':' (ownership exceptions) is not portable.
    return _UNSAFE.sub("_", key.replace(":", "--")) + ".yaml"


class _Dumper(yaml.SafeDumper):
    """Block style everywhere, multi-line strings as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _sorted_deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_deep(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_deep(item) for item in value]
    return value


def canonical(kind: str, state: dict[str, Any]) -> dict[str, Any]:
    """Fields in the kind's reading order (code first, rules as target → source → …); free-form settings
    (config, JSON Schema, transform arguments) sorted, because PostgreSQL's jsonb does not keep key order."""
    data = normalise(kind, state)
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name == "rules" and isinstance(value, list):
            out[name] = [{**rule, "argument": _sorted_deep(rule.get("argument", {}))} for rule in value]
        else:
            out[name] = _sorted_deep(value)
    return out


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )


def export_config(directory: Path) -> list[Path]:
    """Write every governed object as <directory>/<folder>/<key>.yaml; return the files written."""
    written = []
    for kind in KIND_ORDER:
        handler = HANDLERS[kind]
        folder = directory / handler.folder
        folder.mkdir(parents=True, exist_ok=True)
        keep = set()
        for key in handler.all_keys():
            state = handler.current(key)
            if state is None:
                continue
            path = folder / _filename(key)
            path.write_text(dump_yaml(canonical(kind, state)), encoding="utf-8")
            keep.add(path.name)
            written.append(path)
        _remove_stale(folder, keep)
    written += _export_samples(directory / SAMPLES_FOLDER)
    return written


def _remove_stale(folder: Path, keep: set[str]) -> None:
    # An object deleted since the last export must not linger in the repository.
    for stale in folder.glob("*.yaml"):
        if stale.name not in keep:
            stale.unlink()


def _export_samples(folder: Path) -> list[Path]:
    """Each mapping set's sample suite as <folder>/<mapping code>.yaml, next to the mapping it tests."""
    folder.mkdir(parents=True, exist_ok=True)
    written, keep = [], set()
    for code in HANDLERS[ChangeKind.MAPPING].all_keys():
        cases = samples_of(code)
        if not cases:
            continue
        path = folder / _filename(code)
        path.write_text(dump_yaml(samples_document(code, cases)), encoding="utf-8")
        keep.add(path.name)
        written.append(path)
    _remove_stale(folder, keep)
    return written


def samples_document(code: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "mapping_set": code,
        "cases": [{**case, "expected": _sorted_deep(case.get("expected") or {})} for case in cases],
    }


@dataclass
class ImportReport:
    """What import_config did with each file."""

    created: list[ChangeRequest] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_config(directory: Path) -> list[tuple[str, Path, Any]]:
    """Every YAML file under the kind folders, in dependency order, parsed (a parse error is kept, not raised)."""
    found = []
    for kind in KIND_ORDER:
        folder = directory / HANDLERS[kind].folder
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            try:
                data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                data = exc
            found.append((kind, path, data))
    return found


@transaction.atomic
def import_config(directory: Path, *, actor: User, reason: str, submit: bool = True) -> ImportReport:
    """Turn each file that differs from the live configuration into a change request by `actor`."""
    report = ImportReport()
    entries = read_config(directory)
    if not entries:
        report.errors.append(f"{directory}: no configuration files found")
    suites = _read_samples(directory / SAMPLES_FOLDER, report)
    for kind, path, data in entries:
        name = f"{path.parent.name}/{path.name}"
        if isinstance(data, Exception):
            report.errors.append(f"{name}: not valid YAML: {data}")
            continue
        if not isinstance(data, dict):
            report.errors.append(f"{name}: expected a mapping of fields at the top level")
            continue
        handler = HANDLERS[kind]
        try:
            key = handler.key(data)
        except (KeyError, TypeError):
            report.errors.append(f"{name}: the identifying field is missing")
            continue
        suite = suites.pop(key, None) if kind == ChangeKind.MAPPING else None
        if services.open_request_for(kind, key) is not None:
            report.pending.append(name)
            continue
        if suite is not None and suite != samples_of(key):
            # A changed suite travels with its mapping set's change request, so the board sees it too.
            data = {**data, "samples": suite}
        try:
            with transaction.atomic():
                cr = services.change_request_create(
                    kind=kind, after=data, title=f"Import {name}", reason=reason, actor=actor
                )
                if submit:
                    cr = services.change_request_submit(change_request=cr, actor=actor)
        except services.GovernanceError:
            report.unchanged.append(name)
            continue
        except ProposalInvalid as exc:
            report.errors.append(f"{name}: " + "; ".join(exc.errors))
            continue
        report.created.append(cr)
    report.errors += [
        f"{SAMPLES_FOLDER}/{_filename(code)}: there is no {HANDLERS[ChangeKind.MAPPING].folder}/"
        f"{_filename(code)} for this sample suite"
        for code in sorted(suites)
    ]
    return report


def _read_samples(folder: Path, report: ImportReport) -> dict[str, list[dict[str, Any]]]:
    """The sample suites under `folder` by mapping code, normalised like a proposal's; bad files reported."""
    suites: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        name = f"{SAMPLES_FOLDER}/{path.name}"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            report.errors.append(f"{name}: not valid YAML: {exc}")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("mapping_set"), str):
            report.errors.append(f"{name}: expected mapping_set and cases")
            continue
        errors = sample_errors(data.get("cases"))
        if errors:
            report.errors.append(f"{name}: " + "; ".join(errors))
            continue
        suites[data["mapping_set"]] = normalise(ChangeKind.MAPPING, {"rules": [], "samples": data["cases"]})[
            "samples"
        ]
    return suites
