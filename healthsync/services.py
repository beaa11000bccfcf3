"""Audited writes on exception items: how revenue-cycle staff and engineers work the exception queue.

Every service takes the acting user, checks the permission to work exceptions and runs in one transaction;
django-auditlog records each change with the actor.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from healthsync.audit import acting_as
from healthsync.choices import ExceptionKind, ExceptionStatus, MessageStatus
from healthsync.models import ExceptionComment, ExceptionItem, Message
from healthsync.registry import workflow_registry

if TYPE_CHECKING:
    from django.contrib.auth.models import User

WORK_PERMISSION = "healthsync.work_exceptionitem"
REPLAY_PERMISSION = "healthsync.replay_message"

# Sent (inside the transaction) when an exception is resolved or ignored, with `exception` and `actor`:
# workflows listen so that a run the exception blocked moves on.
exception_closed = Signal()

# Work queues an exception can be routed back to: the team that owns the fix at the source.
WORK_QUEUES = {
    "registration": "Patient access / registration",
    "coding": "Coding / HIM",
    "charge_capture": "Charge capture",
    "billing": "Billing",
    "accounts_payable": "Accounts payable",
    "integration": "Integration team",
}


def _check(actor: User) -> None:
    if not actor.has_perm(WORK_PERMISSION):
        raise PermissionDenied("You are not allowed to work exceptions.")


def _locked(exception: ExceptionItem) -> ExceptionItem:
    return ExceptionItem.objects.select_for_update().get(pk=exception.pk)


def _require_open(exception: ExceptionItem) -> None:
    if not exception.is_open:
        raise ValidationError(f"This exception is already {exception.get_status_display().lower()}.")


@transaction.atomic
def exception_assign(*, exception: ExceptionItem, assignee: User | None, actor: User) -> ExceptionItem:
    """Give the exception to someone (None: back to the queue); assigning starts the work on it."""
    _check(actor)
    with acting_as(actor):
        exception = _locked(exception)
        _require_open(exception)
        exception.assignee = assignee
        if assignee is not None and exception.status == ExceptionStatus.OPEN:
            exception.status = ExceptionStatus.IN_PROGRESS
        elif assignee is None and exception.status == ExceptionStatus.IN_PROGRESS:
            exception.status = ExceptionStatus.OPEN
        exception.save(update_fields=["assignee", "status", "updated_at"])
    return exception


@transaction.atomic
def exception_comment(*, exception: ExceptionItem, body: str, actor: User) -> ExceptionComment:
    _check(actor)
    body = (body or "").strip()
    if not body:
        raise ValidationError("A comment cannot be empty.")
    return ExceptionComment.objects.create(exception=exception, author=actor, body=body)


@transaction.atomic
def exception_resolve(*, exception: ExceptionItem, note: str, actor: User) -> ExceptionItem:
    """Close the exception as dealt with; the note saying how is required."""
    _check(actor)
    note = (note or "").strip()
    if not note:
        raise ValidationError("Say how the exception was resolved.")
    with acting_as(actor):
        exception = _locked(exception)
        _require_open(exception)
        _close(exception, ExceptionStatus.RESOLVED, note, actor)
    return exception


@transaction.atomic
def exception_ignore(*, exception: ExceptionItem, reason: str, actor: User) -> ExceptionItem:
    """Close the exception without action (a test patient, a duplicate); the reason is required."""
    _check(actor)
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("Say why the exception is ignored.")
    with acting_as(actor):
        exception = _locked(exception)
        _require_open(exception)
        _close(exception, ExceptionStatus.IGNORED, reason, actor)
    return exception


def _close(exception: ExceptionItem, status: str, note: str, actor: User) -> None:
    exception.status = status
    exception.resolution_note = note
    exception.resolved_by = actor
    exception.resolved_at = timezone.now()
    exception.save(update_fields=["status", "resolution_note", "resolved_by", "resolved_at", "updated_at"])
    exception_closed.send(sender=ExceptionItem, exception=exception, actor=actor)


@transaction.atomic
def exception_retry(
    *, exception: ExceptionItem, actor: User, fixes: dict[str, str] | None = None
) -> ExceptionItem:
    """Apply `fixes` (keys from detail["fix_fields"]) to the workflow's data and run the recovery again.

    The source message and its event stay as received. Retrying a closed exception does nothing, and a
    retry never causes a second claim or journal entry: the deliveries are keyed for idempotency.
    """
    _check(actor)
    with acting_as(actor):
        exception = _locked(exception)
        if not exception.is_open:
            return exception
        fixes = {
            name: str(value).strip() for name, value in (fixes or {}).items() if str(value or "").strip()
        }
        allowed = {field["name"] for field in (exception.detail or {}).get("fix_fields", [])}
        unknown = sorted(set(fixes) - allowed)
        if unknown:
            raise ValidationError(f"These fields cannot be fixed on this exception: {', '.join(unknown)}")
        handler = workflow_registry.retry_handler_for(exception.workflow) if exception.workflow else None
        if handler is not None:
            handler(exception, fixes, actor)
        elif exception.delivery_id is not None:
            from healthsync.deliveries import delivery_reset

            assert exception.delivery is not None
            delivery_reset(delivery=exception.delivery)
        elif exception.message_id is not None and exception.kind in (
            ExceptionKind.MAPPING_FAILED,
            ExceptionKind.SCHEMA_INVALID,
        ):
            from healthsync.pipeline import requeue_message

            assert exception.message is not None
            requeue_message(exception.message)
        else:
            raise ValidationError("There is nothing to retry for this exception.")
        body = "Retried."
        if fixes:
            labels = {
                field["name"]: field.get("label", field["name"]) for field in exception.detail["fix_fields"]
            }
            body = "Fixed " + ", ".join(labels[name] for name in sorted(fixes)) + " and retried."
        ExceptionComment.objects.create(exception=exception, author=actor, body=body)
        exception.refresh_from_db()
    return exception


@transaction.atomic
def exception_route_back(*, exception: ExceptionItem, queue: str, note: str, actor: User) -> ExceptionItem:
    """Send the exception to the team that fixes it at the source; it waits, unassigned, in their queue."""
    _check(actor)
    if queue not in WORK_QUEUES:
        raise ValidationError(f"{queue or 'An empty name'} is not a work queue.")
    note = (note or "").strip()
    with acting_as(actor):
        exception = _locked(exception)
        _require_open(exception)
        exception.detail = {**(exception.detail or {}), "work_queue": queue}
        exception.status = ExceptionStatus.WAITING
        exception.assignee = None
        exception.save(update_fields=["detail", "status", "assignee", "updated_at"])
        body = f"Routed back to {WORK_QUEUES[queue]}." + (f" {note}" if note else "")
        ExceptionComment.objects.create(exception=exception, author=actor, body=body)
    return exception


@transaction.atomic
def exception_replay(*, exception: ExceptionItem, actor: User) -> Message:
    """Replay the exception's source message as a new message (the original kept); the worker processes it.

    Events are keyed by source and control id, so a replay never duplicates an effect that already happened.
    """
    _check(actor)
    if not actor.has_perm(REPLAY_PERMISSION) and not actor.has_perm(WORK_PERMISSION):
        raise PermissionDenied("You are not allowed to replay messages.")
    with acting_as(actor):
        exception = _locked(exception)
        _require_open(exception)
        original = exception.message
        if original is None:
            raise ValidationError("This exception has no source message to replay.")
        raw = bytes(original.raw)
        replay = Message.objects.create(
            connector=original.connector,
            raw=raw,
            sha256=hashlib.sha256(raw).hexdigest(),
            sender=original.sender,
            control_id=original.control_id,
            message_type=original.message_type,
            replay_of=original,
            lane=original.lane,
            business_key=original.business_key,
            status=MessageStatus.RECEIVED,
        )
        ExceptionComment.objects.create(
            exception=exception, author=actor, body=f"Replayed the source message as message #{replay.pk}."
        )
        from healthsync.pipeline import _enqueue_processing

        transaction.on_commit(_enqueue_processing)
    return replay


def exception_bulk(
    *, action: str, exceptions: list[ExceptionItem], actor: User, **kwargs: object
) -> dict[str, int]:
    """Apply one action (retry, assign, resolve, ignore, route_back) to many exceptions, each in its own
    transaction so one that fails does not undo the others; returns counts of done and skipped."""
    _check(actor)
    calls = {
        "retry": exception_retry,
        "assign": exception_assign,
        "resolve": exception_resolve,
        "ignore": exception_ignore,
        "route_back": exception_route_back,
    }
    if action not in calls:
        raise ValidationError(f"{action} is not a bulk action.")
    done = skipped = 0
    for exception in exceptions:
        try:
            calls[action](exception=exception, actor=actor, **kwargs)  # type: ignore[operator]
            done += 1
        except ValidationError:
            skipped += 1
    return {"done": done, "skipped": skipped}
