"""The one way a workflow blocks a run on an exception: raise it, or refresh the one already open.

Every workflow keeps at most one open exception per run and cause (the kind, narrowed by `match` when one run
can have several, such as one per invoice), so repeated events refresh the queue row instead of piling up.

Within a processing chunk (healthsync.unitofwork) a workflow may read ahead which kinds its runs have open
(`exceptions_read_ahead`): raising a kind none of them has open then needs no look-up, and the new row is
written with the chunk's other new exceptions at its end, post_save following as `create()` would (the audit
log's create entries written together too). Whatever reads a run's exceptions back from the table goes through
`open_exceptions`, which writes the run's new ones first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from healthsync.audit import send_created_many
from healthsync.choices import RunStatus
from healthsync.inserts import insert_many
from healthsync.models import ExceptionItem
from healthsync.unitofwork import current

if TYPE_CHECKING:
    from healthsync.models import CanonicalEvent
    from healthsync.models.core import ExceptionItemQuerySet
    from workflows.models import WorkflowRun

REASON_LIMIT = 2000
# Per chunk: (workflow, business key) -> the kinds that may be open (open when read ahead, or raised since).
_OPEN_KINDS = "exceptions.open_kinds"
# Per chunk, pending: (workflow, business key) -> the run's exceptions raised in the chunk, not yet written.
_NEW = "exceptions.new"


def exception_raise_or_refresh(
    run: WorkflowRun,
    kind: str,
    reason: str,
    *,
    detail: dict[str, Any],
    event: CanonicalEvent | None = None,
    match: dict[str, Any] | None = None,
    without_delivery: bool = False,
    **fields: Any,
) -> ExceptionItem:
    """Open (or update) the run's exception of `kind` and mark the run blocked; the caller saves the run.

    `match` narrows the lookup (e.g. {"detail__invoice_number": "INV-1"}); `without_delivery` leaves a
    delivery's own exception alone; `fields` are extra columns (facility, payer, amount). An exception
    raised in a chunk after `exceptions_read_ahead` has no primary key until the chunk is written.
    """
    run.status = RunStatus.BLOCKED
    values = {"reason": reason[:REASON_LIMIT], "detail": detail, **fields}
    unit = current()
    open_kinds = unit.identity_map(_OPEN_KINDS).get((run.workflow, run.business_key)) if unit else None
    if unit is not None and open_kinds is not None and match is None and kind not in open_kinds:
        item = _new_item(run, kind, event, values)
        open_kinds.add(kind)
        unit.pending(_NEW, dict, _write_new).setdefault((run.workflow, run.business_key), []).append(item)
        return item
    existing = open_exceptions(run.workflow, run.business_key).filter(kind=kind, **(match or {}))
    if without_delivery:
        existing = existing.filter(delivery__isnull=True)
    item = existing.first()
    if item is not None:
        for name, value in values.items():
            setattr(item, name, value)
        item.save()
        return item
    item = _new_item(run, kind, event, values)
    item.save(force_insert=True)
    return item


def exceptions_read_ahead(workflow: str, business_keys: Iterable[str]) -> None:
    """Within a chunk, learn in one query which kinds of exception these runs have open (once per run).

    The caller holds the runs' row locks: no one else raises a workflow exception for them meanwhile (a
    delivery's own exceptions, raised elsewhere, are of other kinds than the ones a lookup skips).
    """
    unit = current()
    if unit is None:
        return
    known = unit.identity_map(_OPEN_KINDS)
    keys = {key for key in business_keys if (workflow, key) not in known}
    if not keys:
        return
    for key in keys:
        known[workflow, key] = set()
    rows = (
        ExceptionItem.objects.open()
        .filter(workflow=workflow, business_key__in=keys)
        .order_by()
        .values_list("business_key", "kind")
        .distinct()
    )
    for key, kind in rows:
        known[workflow, key].add(kind)


def open_exceptions(workflow: str, business_key: str) -> ExceptionItemQuerySet:
    """The run's open exceptions in the table, including any its chunk has raised and not yet written."""
    unit = current()
    if unit is not None and (workflow, business_key) in unit.pending(_NEW, dict, _write_new):
        unit.flush()
    return ExceptionItem.objects.open().filter(workflow=workflow, business_key=business_key)


def _new_item(
    run: WorkflowRun, kind: str, event: CanonicalEvent | None, values: dict[str, Any]
) -> ExceptionItem:
    return ExceptionItem(
        kind=kind,
        workflow=run.workflow,
        business_key=run.business_key,
        # An in-memory event (a remittance's claim proxy) has no row of its own to point at.
        event=event if event is not None and event.pk else None,
        message=event.message if event is not None else None,
        **values,
    )


def _write_new(new: dict[tuple[str, str], list[ExceptionItem]]) -> None:
    items = [item for items in new.values() for item in items]
    if not items:
        return
    insert_many(items)
    send_created_many(items)
