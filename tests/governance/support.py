"""Helpers for governance tests: the reference config and a change walked through review."""

from __future__ import annotations

import copy
from typing import Any

from django.contrib.auth.models import User

from healthsync.choices import ChangeKind
from healthsync.governance import services
from healthsync.governance.kinds import handler_for
from healthsync.models import ChangeRequest


def current(kind: str, key: str) -> dict[str, Any]:
    state = handler_for(kind).current(key)
    assert state is not None
    return copy.deepcopy(state)


def mapping_with(code: str, **rule_changes: dict[str, Any]) -> dict[str, Any]:
    """The live mapping `code` with some rules' fields changed, keyed by target."""
    state = current(ChangeKind.MAPPING, code)
    for rule in state["rules"]:
        if rule["target"] in rule_changes:
            rule.update(rule_changes[rule["target"]])
    return state


def propose(kind: str, after: dict[str, Any], author: User, *, submit: bool = True) -> ChangeRequest:
    cr = services.change_request_create(
        kind=kind, after=after, title="Test change", reason="Because", actor=author
    )
    if submit:
        cr = services.change_request_submit(change_request=cr, actor=author)
    return cr


def approve_and_deploy(cr: ChangeRequest, *reviewers: User) -> ChangeRequest:
    for reviewer in reviewers:
        cr = services.change_request_approve(change_request=cr, comment="ok", actor=reviewer)
    return services.change_request_deploy(change_request=cr, actor=reviewers[0])
