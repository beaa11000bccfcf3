"""Fixtures shared by the workflow tests: the reference config plus the workflow seed, and event helpers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connectors.simulators.erp import ErpSimulator
from connectors.simulators.rcm import RcmSimulator
from healthsync.models import CanonicalEvent
from healthsync.seed_workflows import seed_workflow_config
from tests.pipeline_support import commits, destinations, tasks_inline
from workflows.intake import emit_event


@contextmanager
def workflow_destinations() -> Iterator[tuple[RcmSimulator, ErpSimulator]]:
    """Real RCM and ERP simulators on free ports, the workflow seed applied, tasks run inline."""
    with destinations() as pair, tasks_inline():
        seed_workflow_config()
        yield pair


def emit(
    type: str, subject: str, data: dict[str, Any], *, ref: str, source: str = "rcm-main"
) -> CanonicalEvent | None:
    """Emit an event as a JSON feed would, running the deliveries it causes."""
    with commits():
        return emit_event(type=type, source=source, subject=subject, data=data, source_ref=ref)
