"""Change requests and message replay through the API: the governance and replay services decide."""

from __future__ import annotations

import pytest

from healthsync.models import ChangeRequest, Message
from tests.console_data import connector, message

pytestmark = pytest.mark.django_db

NEW_SYSTEM = {
    "kind": "system",
    "after": {"code": "lab-main", "name": "Laboratory", "kind": "saas"},
    "title": "Add the lab system",
    "reason": "Lab results feed goes live next month.",
}


def test_a_change_is_proposed_submitted_and_approved_with_four_eyes(engineer, board_member, api_for) -> None:
    author, board = api_for(engineer), api_for(board_member)

    created = author.post("/api/v1/change-requests/", NEW_SYSTEM, format="json")
    pk = created.json()["id"]
    own_review = author.post(f"/api/v1/change-requests/{pk}/submit/", format="json")
    self_approval = author.post(f"/api/v1/change-requests/{pk}/approve/", {}, format="json")
    approved = board.post(f"/api/v1/change-requests/{pk}/approve/", {"comment": "Fine."}, format="json")

    assert created.status_code == 201 and created.json()["status"] == "draft"
    assert own_review.json()["status"] == "submitted"
    assert self_approval.status_code == 403
    assert "Four eyes" in self_approval.json()["detail"]
    assert approved.status_code == 200
    assert approved.json()["reviews"][0]["reviewer"] == "board"
    assert ChangeRequest.objects.get(pk=pk).status == approved.json()["status"]


def test_rejecting_needs_a_comment(engineer, board_member, api_for) -> None:
    pk = api_for(engineer).post("/api/v1/change-requests/", NEW_SYSTEM, format="json").json()["id"]
    api_for(engineer).post(f"/api/v1/change-requests/{pk}/submit/", format="json")

    response = api_for(board_member).post(f"/api/v1/change-requests/{pk}/reject/", {}, format="json")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert "comment is required" in response.json()["detail"]


def test_a_proposal_the_kind_refuses_is_a_400(engineer, api_for) -> None:
    bad = {**NEW_SYSTEM, "after": {"code": "lab-main", "name": "", "kind": "nonsense"}}

    response = api_for(engineer).post("/api/v1/change-requests/", bad, format="json")

    assert response.status_code == 400
    assert response.json()["errors"]


def test_roles_that_may_not_propose_changes_are_refused(rcm_analyst, api_for) -> None:
    response = api_for(rcm_analyst).post("/api/v1/change-requests/", NEW_SYSTEM, format="json")

    assert response.status_code == 403
    assert not ChangeRequest.objects.exists()


def test_a_message_is_replayed_as_a_new_message(engineer, api_for) -> None:
    original = message(status="processed")

    response = api_for(engineer).post(
        f"/api/v1/messages/{original.pk}/replay/", {"reason": "Mapping fixed."}, format="json"
    )

    assert response.status_code == 201
    body = response.json()
    assert body["message_count"] == 1 and body["actor_username"] == "engineer"
    copy = Message.objects.get(pk=body["replays"][0])
    assert copy.replay_of_id == original.pk


def test_a_replay_needs_a_reason_and_the_replay_permission(engineer, board_member, api_for) -> None:
    original = message(status="processed")

    no_reason = api_for(engineer).post(f"/api/v1/messages/{original.pk}/replay/", {}, format="json")
    board = api_for(board_member).post(
        f"/api/v1/messages/{original.pk}/replay/", {"reason": "x"}, format="json"
    )

    assert no_reason.status_code == 400 and no_reason.json()["errors"][0]["field"] == "reason"
    assert board.status_code == 403
    assert Message.objects.count() == 1


def test_a_replay_refuses_an_inbound_connector_as_destination(engineer, api_for) -> None:
    original = message(status="processed")

    response = api_for(engineer).post(
        f"/api/v1/messages/{original.pk}/replay/",
        {"reason": "x", "destinations": [connector().pk]},
        format="json",
    )

    assert response.status_code == 400
    assert "not destinations" in response.json()["detail"]
