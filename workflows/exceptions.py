"""The one way a workflow blocks a run on an exception: raise it, or refresh the one already open.

Every workflow keeps at most one open exception per run and cause (the kind, narrowed by `match` when one run
can have several, such as one per invoice), so repeated events refresh the queue row instead of piling up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from healthsync.choices import RunStatus
from healthsync.models import ExceptionItem

if TYPE_CHECKING:
    from healthsync.models import CanonicalEvent
    from workflows.models import WorkflowRun

REASON_LIMIT = 2000


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
    delivery's own exception alone; `fields` are extra columns (facility, payer, amount).
    """
    values = {"reason": reason[:REASON_LIMIT], "detail": detail, **fields}
    existing = ExceptionItem.objects.open().filter(
        workflow=run.workflow, business_key=run.business_key, kind=kind, **(match or {})
    )
    if without_delivery:
        existing = existing.filter(delivery__isnull=True)
    item = existing.first()
    if item is not None:
        for name, value in values.items():
            setattr(item, name, value)
        item.save()
    else:
        item = ExceptionItem.objects.create(
            kind=kind,
            workflow=run.workflow,
            business_key=run.business_key,
            # An in-memory event (a remittance's claim proxy) has no row of its own to point at.
            event=event if event is not None and event.pk else None,
            message=event.message if event is not None else None,
            **values,
        )
    run.status = RunStatus.BLOCKED
    return item
