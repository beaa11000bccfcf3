"""What the runtime reads of governed settings that have a default in code: step SLAs and code tables.

Workflow steps declare their SLA in workflows/definitions.py; a deployed change request (kind workflow_sla)
overrides it per step. Code tables exist only as governed objects; a mapping rule's lookup names one with
{"code_table": "<code>"} instead of carrying an inline table.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING

from healthsync.models.governance import CodeTable, WorkflowSla
from healthsync.unitofwork import snapshot

if TYPE_CHECKING:
    from workflows.definitions import Workflow

_DURATION = re.compile(r"^\s*(\d+)\s*([dhms])\s*$")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def format_duration(seconds: int | None) -> str | None:
    """A readable SLA: 3d, 4h, 30m or 45s (the largest whole unit); None for no limit."""
    if seconds is None:
        return None
    for unit, size in _UNITS.items():
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return "0s"


def parse_duration(text: str | None) -> int | None:
    """Seconds from 3d / 4h / 30m / 45s; None (or blank) means no limit. Raises ValueError otherwise."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    match = _DURATION.match(str(text))
    if match is None or int(match[1]) == 0:
        raise ValueError(f"{text!r} is not a duration such as 3d, 4h, 30m or 45s (or empty for no limit)")
    return int(match[1]) * _UNITS[match[2]]


def step_slas(workflow: Workflow) -> dict[str, timedelta | None]:
    """Each step's SLA as deployed: the governed value where one was deployed, else the code's."""
    slas = {step.name: step.sla for step in workflow.steps}
    for step, seconds in WorkflowSla.objects.filter(workflow=workflow.code).values_list(
        "step", "sla_seconds"
    ):
        if step in slas:
            slas[step] = timedelta(seconds=seconds) if seconds is not None else None
    return slas


def code_table(code: str) -> dict[str, str] | None:
    """The entries of a deployed code table, None when no table has that code.

    Read once per processing batch (a mapping rule looks it up for every message); a table deployed meanwhile
    counts from the next batch on, like a newly activated mapping version.
    """
    entries = snapshot(("governance.code_table", code), lambda: _code_table_entries(code))
    return dict(entries) if entries is not None else None


def _code_table_entries(code: str) -> dict[str, str] | None:
    return CodeTable.objects.filter(code=code).values_list("entries", flat=True).first()
