"""Audited writes on exception items: how revenue-cycle staff and engineers work the exception queue.

Every service takes the acting user, checks the permission to work exceptions and runs in one transaction;
django-auditlog records each change with the actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from auditlog.context import set_actor
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from healthsync.choices import ExceptionKind, ExceptionStatus
from healthsync.models import ExceptionComment, ExceptionItem
from healthsync.registry import workflow_registry

if TYPE_CHECKING:
    from django.contrib.auth.models import User

WORK_PERMISSION = "healthsync.work_exceptionitem"


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
    with set_actor(actor):
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
    with set_actor(actor):
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
    with set_actor(actor):
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


@transaction.atomic
def exception_retry(
    *, exception: ExceptionItem, actor: User, fixes: dict[str, str] | None = None
) -> ExceptionItem:
    """Apply `fixes` (keys from detail["fix_fields"]) to the workflow's data and run the recovery again.

    The source message and its event stay as received. Retrying a closed exception does nothing, and a
    retry never causes a second claim or journal entry: the deliveries are keyed for idempotency.
    """
    _check(actor)
    with set_actor(actor):
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
