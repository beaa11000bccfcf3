"""Working the exception queue: assign, comment, resolve, ignore, with permissions and audit."""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError

from healthsync import services
from healthsync.choices import ExceptionKind, ExceptionStatus
from healthsync.models import ExceptionItem

pytestmark = pytest.mark.django_db


@pytest.fixture
def item() -> ExceptionItem:
    return ExceptionItem.objects.create(
        kind=ExceptionKind.MISSING_DATA,
        reason="Discharge of encounter V1 cannot be billed",
        business_key="V1",
    )


def test_assigning_starts_the_work_and_unassigning_returns_it_to_the_queue(
    item: ExceptionItem, rcm_analyst: User
) -> None:
    item = services.exception_assign(exception=item, assignee=rcm_analyst, actor=rcm_analyst)
    assert item.assignee == rcm_analyst and item.status == ExceptionStatus.IN_PROGRESS
    item = services.exception_assign(exception=item, assignee=None, actor=rcm_analyst)
    assert item.assignee is None and item.status == ExceptionStatus.OPEN
    assert LogEntry.objects.get_for_object(item).filter(actor=rcm_analyst).count() == 2


def test_a_comment_is_kept_with_its_author(item: ExceptionItem, rcm_analyst: User) -> None:
    comment = services.exception_comment(exception=item, body="  Called the payer. ", actor=rcm_analyst)
    assert comment.body == "Called the payer." and comment.author == rcm_analyst
    with pytest.raises(ValidationError):
        services.exception_comment(exception=item, body="   ", actor=rcm_analyst)


def test_resolving_needs_a_note_and_records_who(item: ExceptionItem, rcm_analyst: User) -> None:
    with pytest.raises(ValidationError):
        services.exception_resolve(exception=item, note=" ", actor=rcm_analyst)
    item = services.exception_resolve(exception=item, note="Claim sent by hand", actor=rcm_analyst)
    assert item.status == ExceptionStatus.RESOLVED
    assert item.resolved_by == rcm_analyst and item.resolved_at is not None
    assert item.resolution_note == "Claim sent by hand"
    with pytest.raises(ValidationError):
        services.exception_resolve(exception=item, note="again", actor=rcm_analyst)


def test_ignoring_needs_a_reason(item: ExceptionItem, rcm_analyst: User) -> None:
    with pytest.raises(ValidationError):
        services.exception_ignore(exception=item, reason="", actor=rcm_analyst)
    item = services.exception_ignore(exception=item, reason="Test patient", actor=rcm_analyst)
    assert item.status == ExceptionStatus.IGNORED and item.resolution_note == "Test patient"


def test_retrying_an_exception_with_nothing_to_retry_says_so(item: ExceptionItem, rcm_analyst: User) -> None:
    with pytest.raises(ValidationError):
        services.exception_retry(exception=item, actor=rcm_analyst)


def test_retrying_a_closed_exception_does_nothing(item: ExceptionItem, rcm_analyst: User) -> None:
    services.exception_ignore(exception=item, reason="Test patient", actor=rcm_analyst)
    item = services.exception_retry(exception=item, actor=rcm_analyst)
    assert item.status == ExceptionStatus.IGNORED
    assert not item.comments.exists()


@pytest.mark.parametrize("role", ["executive", "outsider", "board_member"])
def test_people_who_may_not_work_exceptions_are_refused(
    item: ExceptionItem, role: str, request: pytest.FixtureRequest
) -> None:
    actor = request.getfixturevalue(role)
    for call in (
        lambda: services.exception_assign(exception=item, assignee=actor, actor=actor),
        lambda: services.exception_comment(exception=item, body="hi", actor=actor),
        lambda: services.exception_resolve(exception=item, note="done", actor=actor),
        lambda: services.exception_ignore(exception=item, reason="no", actor=actor),
        lambda: services.exception_retry(exception=item, actor=actor),
    ):
        with pytest.raises(PermissionDenied):
            call()
    item.refresh_from_db()
    assert item.status == ExceptionStatus.OPEN
