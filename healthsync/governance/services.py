"""Change-request services: the only way governed configuration changes. UI, API and import all call these.

Draft → submitted → approved / rejected / changes requested → deployed. Four eyes: the author never reviews
their own request; an approval needs a board member's approval, and each steward of a data domain the change
touches must approve as well (one person who is both counts for both).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from healthsync.audit import acting_as
from healthsync.choices import ChangeKind, ChangeStatus, ReviewDecision
from healthsync.governance.bench import run_suite
from healthsync.governance.diff import change_diff
from healthsync.governance.impact import impact_of, mapping_domains
from healthsync.governance.kinds import ProposalInvalid, handler_for, normalise
from healthsync.governance.ownership import ownership_findings
from healthsync.models import ChangeRequest, ChangeReview, DataOwnership, MappingSet, SampleCase
from healthsync.models.governance import OPEN_CHANGE_STATUSES

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

AUTHOR_PERMISSION = "healthsync.add_changerequest"
BOARD_PERMISSION = "healthsync.approve_changerequest"
DEPLOY_PERMISSION = "healthsync.deploy_changerequest"


class GovernanceError(Exception):
    """A change request cannot move as asked; the message says why, in words for the person who asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _audited(actor: User, change_request: ChangeRequest | None = None) -> Any:
    """Attribute every audit row written inside to `actor` and the change request."""
    linked = change_request is not None and change_request.pk
    return acting_as(actor, additional_data={"change_request": change_request.pk} if linked else None)


def _locked(change_request: ChangeRequest) -> ChangeRequest:
    return ChangeRequest.objects.select_for_update().get(pk=change_request.pk)


def _prepare(kind: str, after: dict[str, Any]) -> tuple[dict[str, Any], str]:
    handler = handler_for(kind)
    if not isinstance(after, dict):
        raise ProposalInvalid(["the proposal must be a mapping of fields"])
    errors = handler.validate(after)
    if errors:
        raise ProposalInvalid(errors)
    data = normalise(kind, after)
    return data, handler.key(data)


def _domains(kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    if kind == ChangeKind.MAPPING:
        diff = change_diff(kind, before, after)
        changed = [r.after or r.before or {} for r in diff.rules]
        return mapping_domains(after.get("event_type", ""), changed)
    if kind == ChangeKind.SCHEMA:
        return [after["event_type"].split(".")[0]]
    if kind in (ChangeKind.OWNERSHIP, ChangeKind.OWNERSHIP_EXCEPTION):
        return [after["domain"]]
    if kind == ChangeKind.CONNECTOR:
        return sorted(
            set(DataOwnership.objects.filter(system__code=after["system"]).values_list("domain", flat=True))
        )
    return []


def _schema_findings(change_request: ChangeRequest) -> list[str]:
    if change_request.kind != ChangeKind.SCHEMA:
        return []
    diff = change_diff(change_request.kind, change_request.before, change_request.after)
    if not diff.breaking:
        return []
    impact = impact_of(change_request.kind, change_request.after)
    consumers = impact.mapping_sets + impact.subscribers
    findings = [
        "Breaking schema change ("
        + "; ".join(f"{c.path}: {c.description}" for c in diff.schema if c.breaking)
        + "). Consumers: "
        + (", ".join(consumers) or "none")
        + "."
    ]
    before_major = int(str((change_request.before or {}).get("version", "0.0.0")).split(".")[0])
    if int(change_request.after["version"].split(".")[0]) <= before_major:
        findings.append("A breaking change needs a new major version.")
    return findings


@transaction.atomic
def change_request_create(
    *, kind: str, after: dict[str, Any], title: str, reason: str, actor: User
) -> ChangeRequest:
    """A draft change request proposing `after` (the serialised state) for one governed object."""
    if not actor.has_perm(AUTHOR_PERMISSION):
        raise PermissionDenied("Only integration engineers and the board may propose changes.")
    if not title.strip() or not reason.strip():
        raise ProposalInvalid(["a title and a reason are required"])
    data, key = _prepare(kind, after)
    before = handler_for(kind).current(key)
    if before == data:
        raise GovernanceError("The proposal is identical to what is live: there is nothing to change.")
    change_request = ChangeRequest(
        kind=kind,
        target_key=key,
        title=title.strip(),
        reason=reason.strip(),
        before=before,
        after=data,
        author=actor,
    )
    with _audited(actor):
        change_request.save()
    logger.info("change request %s created by user %s", change_request.pk, actor.pk)
    return change_request


@transaction.atomic
def change_request_update(
    *, change_request: ChangeRequest, after: dict[str, Any], title: str = "", reason: str = "", actor: User
) -> ChangeRequest:
    """The author edits a draft, or a request sent back to them."""
    change_request = _locked(change_request)
    if change_request.author_id != actor.pk:
        raise PermissionDenied("Only the author may edit a change request.")
    if change_request.status not in (ChangeStatus.DRAFT, ChangeStatus.CHANGES_REQUESTED):
        raise GovernanceError(
            f"A {change_request.get_status_display().lower()} change request cannot be edited."
        )
    data, key = _prepare(change_request.kind, after)
    if key != change_request.target_key:
        raise ProposalInvalid([f"the change request is about {change_request.target_key}, not {key}"])
    change_request.after = data
    change_request.title = title.strip() or change_request.title
    change_request.reason = reason.strip() or change_request.reason
    with _audited(actor, change_request):
        change_request.save()
    return change_request


@transaction.atomic
def change_request_submit(*, change_request: ChangeRequest, actor: User) -> ChangeRequest:
    """Send a draft to the board: refresh the before-state, run the sample suite and the review checks."""
    change_request = _locked(change_request)
    if change_request.author_id != actor.pk:
        raise PermissionDenied("Only the author may submit a change request.")
    if change_request.status not in (ChangeStatus.DRAFT, ChangeStatus.CHANGES_REQUESTED):
        raise GovernanceError(
            f"A {change_request.get_status_display().lower()} change request cannot be submitted."
        )
    handler = handler_for(change_request.kind)
    change_request.before = handler.current(change_request.target_key)
    if change_request.before == change_request.after:
        raise GovernanceError("The proposal is identical to what is live: there is nothing to change.")
    change_request.domains = _domains(change_request.kind, change_request.before, change_request.after)
    change_request.suite_result = (
        run_suite(mapping_code=change_request.target_key, proposal=change_request.after)
        if change_request.kind == ChangeKind.MAPPING
        else None
    )
    change_request.findings = ownership_findings(
        change_request.kind, change_request.after
    ) + _schema_findings(change_request)
    change_request.status = ChangeStatus.SUBMITTED
    change_request.submitted_at = timezone.now()
    change_request.decided_at = None
    with _audited(actor, change_request):
        change_request.reviews.filter(superseded=False).update(superseded=True)
        change_request.save()
    return change_request


@dataclass
class ApprovalState:
    """Which approvals a submitted change request has and which it still needs."""

    board_approved_by: list[str] = field(default_factory=list)
    stewards_needed: dict[str, str] = field(default_factory=dict)  # domain → steward username
    stewards_approved: list[str] = field(default_factory=list)  # domains

    @property
    def missing(self) -> list[str]:
        out = [] if self.board_approved_by else ["a governance board member"]
        out += [
            f"{steward}, steward of {domain}"
            for domain, steward in sorted(self.stewards_needed.items())
            if domain not in self.stewards_approved
        ]
        return out

    @property
    def complete(self) -> bool:
        return not self.missing


def stewards_for(change_request: ChangeRequest) -> dict[str, User]:
    """The steward of each data domain the change touches (domain-level entries name the steward)."""
    stewards = {}
    for entry in DataOwnership.objects.filter(
        domain__in=change_request.domains, steward__isnull=False
    ).select_related("steward"):
        stewards.setdefault(entry.domain, entry.steward)
    return stewards


def approval_state(change_request: ChangeRequest) -> ApprovalState:
    state = ApprovalState()
    stewards = stewards_for(change_request)
    state.stewards_needed = {domain: user.get_username() for domain, user in stewards.items()}
    for review in change_request.reviews.filter(
        superseded=False, decision=ReviewDecision.APPROVE
    ).select_related("reviewer"):
        if review.as_board:
            state.board_approved_by.append(review.reviewer.get_username())
        state.stewards_approved.extend(review.stewarded_domains)
    return state


def can_review(change_request: ChangeRequest, user: User) -> bool:
    if user.pk == change_request.author_id:
        return False
    if user.has_perm(BOARD_PERMISSION):
        return True
    return any(steward.pk == user.pk for steward in stewards_for(change_request).values())


def _review(change_request: ChangeRequest, actor: User, decision: str, comment: str) -> ChangeRequest:
    change_request = _locked(change_request)
    if change_request.author_id == actor.pk:
        raise PermissionDenied("Four eyes: the author of a change request cannot review it.")
    stewarded = [d for d, user in stewards_for(change_request).items() if user.pk == actor.pk]
    as_board = actor.has_perm(BOARD_PERMISSION)
    if not as_board and not stewarded:
        raise PermissionDenied("Only the governance board and the data stewards concerned review changes.")
    if change_request.status != ChangeStatus.SUBMITTED:
        raise GovernanceError(
            f"A {change_request.get_status_display().lower()} change request cannot be reviewed."
        )
    if decision != ReviewDecision.APPROVE and not comment.strip():
        raise GovernanceError("Say why: a comment is required to reject or send back a change.")
    if decision == ReviewDecision.APPROVE and change_request.suite_passed is False:
        raise GovernanceError("The sample suite fails on this change: it cannot be approved.")
    with _audited(actor, change_request):
        ChangeReview.objects.create(
            change_request=change_request,
            reviewer=actor,
            decision=decision,
            comment=comment.strip(),
            as_board=as_board,
            stewarded_domains=stewarded,
        )
        if decision == ReviewDecision.REJECT:
            change_request.status = ChangeStatus.REJECTED
        elif decision == ReviewDecision.REQUEST_CHANGES:
            change_request.status = ChangeStatus.CHANGES_REQUESTED
        elif approval_state(change_request).complete:
            change_request.status = ChangeStatus.APPROVED
        if change_request.status != ChangeStatus.SUBMITTED:
            change_request.decided_at = timezone.now()
        change_request.save()
    return change_request


@transaction.atomic
def change_request_approve(*, change_request: ChangeRequest, comment: str = "", actor: User) -> ChangeRequest:
    """Record an approval; the request is approved once the board and every steward concerned agreed."""
    return _review(change_request, actor, ReviewDecision.APPROVE, comment)


@transaction.atomic
def change_request_reject(*, change_request: ChangeRequest, comment: str, actor: User) -> ChangeRequest:
    return _review(change_request, actor, ReviewDecision.REJECT, comment)


@transaction.atomic
def change_request_request_changes(
    *, change_request: ChangeRequest, comment: str, actor: User
) -> ChangeRequest:
    return _review(change_request, actor, ReviewDecision.REQUEST_CHANGES, comment)


@transaction.atomic
def change_request_deploy(*, change_request: ChangeRequest, actor: User) -> ChangeRequest:
    """Make an approved change live, in this one transaction; refuse if the live object moved meanwhile."""
    if not actor.has_perm(DEPLOY_PERMISSION):
        raise PermissionDenied("You may not deploy changes.")
    change_request = _locked(change_request)
    if change_request.status != ChangeStatus.APPROVED:
        raise GovernanceError("Only an approved change request can be deployed.")
    handler = handler_for(change_request.kind)
    if handler.current(change_request.target_key) != change_request.before:
        raise GovernanceError(
            f"{change_request.target_key} changed since this request was reviewed: submit it again for review."
        )
    approvers = [
        review.reviewer
        for review in change_request.reviews.filter(
            superseded=False, decision=ReviewDecision.APPROVE
        ).select_related("reviewer")
    ]
    with _audited(actor, change_request):
        handler.apply(change_request, approvers)
        change_request.status = ChangeStatus.DEPLOYED
        change_request.deployed_at = timezone.now()
        change_request.deployed_by = actor
        change_request.save()
    logger.info("change request %s deployed by user %s", change_request.pk, actor.pk)
    return change_request


@transaction.atomic
def change_request_rollback(*, change_request: ChangeRequest, reason: str, actor: User) -> ChangeRequest:
    """A new, submitted change request restoring the state the deployed request replaced."""
    if change_request.status != ChangeStatus.DEPLOYED:
        raise GovernanceError("Only a deployed change can be rolled back.")
    if change_request.before is None:
        raise GovernanceError("This change created its object: there is no previous version to restore.")
    rollback = change_request_create(
        kind=change_request.kind,
        after=change_request.before,
        title=f"Roll back CR-{change_request.pk}: {change_request.title}"[:200],
        reason=reason,
        actor=actor,
    )
    rollback.rollback_of = change_request
    rollback.save(update_fields=["rollback_of"])
    return change_request_submit(change_request=rollback, actor=actor)


def open_request_for(kind: str, key: str) -> ChangeRequest | None:
    return ChangeRequest.objects.filter(kind=kind, target_key=key, status__in=OPEN_CHANGE_STATUSES).first()


@transaction.atomic
def sample_case_save(
    *,
    mapping_set: MappingSet,
    name: str,
    message: str,
    expected: dict[str, Any],
    expect_error: bool = False,
    actor: User,
) -> SampleCase:
    """Add or replace a sample case of a mapping set's suite (test data: no review needed, but audited)."""
    if not actor.has_perm(AUTHOR_PERMISSION):
        raise PermissionDenied("Only integration engineers and the board maintain sample suites.")
    if not name.strip() or not message.strip():
        raise ProposalInvalid(["a sample case needs a name and a message"])
    with _audited(actor):
        case, _ = SampleCase.objects.update_or_create(
            mapping_set=mapping_set,
            name=name.strip(),
            defaults={
                "message": message,
                "expected": expected,
                "expect_error": expect_error,
                "created_by": actor,
            },
        )
    return case


__all__ = [
    "GovernanceError",
    "ProposalInvalid",
    "approval_state",
    "can_review",
    "change_request_approve",
    "change_request_create",
    "change_request_deploy",
    "change_request_reject",
    "change_request_request_changes",
    "change_request_rollback",
    "change_request_submit",
    "change_request_update",
    "open_request_for",
    "sample_case_save",
]
