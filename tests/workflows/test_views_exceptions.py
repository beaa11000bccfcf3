"""The exception queue pages: filters, sorting, PHI masking and audit, and the recovery actions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from healthsync.choices import DeliveryStatus, Direction, ExceptionKind, ExceptionStatus, Protocol
from healthsync.models import Connector, Delivery, ExceptionItem
from tests import console_data
from workflows.models import WorkflowRun

HX = {"HTTP_HX_REQUEST": "true"}


def _access_rows(exception: ExceptionItem) -> int:
    return LogEntry.objects.get_for_object(exception).filter(action=LogEntry.Action.ACCESS).count()


def _delivery() -> Delivery:
    erp = Connector.objects.create(
        system=console_data.connector().system,
        code="rcm-out",
        name="RCM claims",
        direction=Direction.OUTBOUND,
        protocol=Protocol.REST,
        config={"base_url": "http://127.0.0.1:1"},
    )
    return Delivery.objects.create(
        connector=erp,
        operation="submit_claim",
        idempotency_key="rcm:claim:ENC1001:1",
        status=DeliveryStatus.FAILED,
        attempts=5,
        last_error="HTTP 422: subscriber id missing",
    )


# List ---------------------------------------------------------------------------------------------------


def test_queue_shows_open_exceptions_by_default(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    console_data.exception_item(business_key="ENC-OPEN")
    console_data.exception_item(business_key="ENC-DONE", status=ExceptionStatus.RESOLVED)
    body = client_for(rcm_analyst).get("/exceptions/").content.decode()
    assert "ENC-OPEN" in body
    assert "ENC-DONE" not in body


def test_queue_filters_by_status_kind_assignee_and_business_key(
    client_for: Callable[[User], Client], rcm_analyst: User, engineer: User
) -> None:
    console_data.exception_item(business_key="ENC-A", kind=ExceptionKind.MISSING_DATA, assignee=rcm_analyst)
    console_data.exception_item(business_key="ENC-B", kind=ExceptionKind.DESTINATION_DOWN, assignee=engineer)
    console_data.exception_item(business_key="ENC-C", status=ExceptionStatus.IGNORED)
    client = client_for(rcm_analyst)

    def keys(query: str) -> set[str]:
        page = client.get(f"/exceptions/?{query}").context["page"]
        return {item.business_key for item in page.object_list}

    assert keys("kind=destination_down") == {"ENC-B"}
    assert keys("assignee=me") == {"ENC-A"}
    assert keys(f"assignee={engineer.pk}") == {"ENC-B"}
    assert keys("assignee=none") == set()
    assert keys("status=ignored") == {"ENC-C"}
    assert keys("status=all") == {"ENC-A", "ENC-B", "ENC-C"}
    assert keys("q=enc-b") == {"ENC-B"}


def test_queue_sorts_by_age_and_amount(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    now = timezone.now()
    console_data.exception_item(
        business_key="OLD-SMALL", amount=Decimal(10), created_at=now - timedelta(days=3)
    )
    console_data.exception_item(
        business_key="NEW-BIG", amount=Decimal(900), created_at=now - timedelta(hours=1)
    )
    console_data.exception_item(
        business_key="MID-MID", amount=Decimal(50), created_at=now - timedelta(days=1)
    )
    client = client_for(rcm_analyst)

    def order(sort: str) -> list[str]:
        return [
            item.business_key for item in client.get(f"/exceptions/?sort={sort}").context["page"].object_list
        ]

    assert order("age") == ["OLD-SMALL", "MID-MID", "NEW-BIG"]
    assert order("-age") == ["NEW-BIG", "MID-MID", "OLD-SMALL"]
    assert order("-amount") == ["NEW-BIG", "MID-MID", "OLD-SMALL"]
    assert order("amount") == ["OLD-SMALL", "MID-MID", "NEW-BIG"]


def test_queue_ignores_unknown_filter_values(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    console_data.exception_item(business_key="ENC-OPEN")
    response = client_for(rcm_analyst).get("/exceptions/?status=bogus&sort=DROP+TABLE&assignee=abc")
    assert response.status_code == 200
    assert [item.business_key for item in response.context["page"].object_list] == ["ENC-OPEN"]


def test_queue_paginates(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    for number in range(30):
        console_data.exception_item(business_key=f"ENC{number:03}")
    client = client_for(rcm_analyst)
    first = client.get("/exceptions/").context["page"]
    second = client.get("/exceptions/?page=2").context["page"]
    assert len(first.object_list) == 25
    assert len(second.object_list) == 5
    assert b"Page 1 of 2" in client.get("/exceptions/").content


def test_htmx_filter_request_gets_only_the_results_partial(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    console_data.exception_item(business_key="ENC-OPEN")
    response = client_for(rcm_analyst).get("/exceptions/?q=ENC", **HX)
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="exception-results"')
    assert "<html" not in body
    assert "ENC-OPEN" in body
    assert "HX-Request" in response["Vary"]


def test_status_counts_partial_counts_every_status(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    console_data.exception_item()
    console_data.exception_item()
    console_data.exception_item(status=ExceptionStatus.RESOLVED)
    response = client_for(rcm_analyst).get("/exceptions/counts/", **HX)
    body = response.content.decode()
    assert body.lstrip().startswith('<ul id="status-counts"')
    assert "Open: <strong>2</strong>" in body
    assert "Resolved: <strong>1</strong>" in body
    assert 'hx-trigger="every 10s' in body


# Detail and PHI -------------------------------------------------------------------------------------------


def test_detail_shows_the_exception_and_its_links(
    client_for: Callable[[User], Client], engineer: User
) -> None:
    message = console_data.message()
    exception = console_data.exception_item(message=message, delivery=_delivery(), amount=Decimal("4321.50"))
    body = client_for(engineer).get(f"/exceptions/{exception.pk}/").content.decode()
    assert "Missing data" in body
    assert "no attending physician" in body
    assert "ENC1001" in body
    assert "$4,321.50" in body
    assert f'href="/messages/{message.pk}/"' in body
    assert "submit_claim" in body
    assert "HTTP 422: subscriber id missing" in body


def test_detail_shows_phi_to_a_role_that_may_see_it_and_audits_the_view(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    exception = console_data.exception_item(message=console_data.message())
    body = client_for(rcm_analyst).get(f"/exceptions/{exception.pk}/").content.decode()
    assert "DOE, JANE" in body
    assert console_data.PATIENT_MRN in body
    entry = LogEntry.objects.get_for_object(exception).get(action=LogEntry.Action.ACCESS)
    assert entry.actor == rcm_analyst


def test_detail_masks_phi_for_a_role_without_it_and_writes_no_access_row(
    client_for: Callable[[User], Client], board_member: User
) -> None:
    exception = console_data.exception_item(message=console_data.message())
    body = client_for(board_member).get(f"/exceptions/{exception.pk}/").content.decode()
    assert "DOE" not in body
    assert console_data.PATIENT_MRN not in body
    assert "••••••" in body
    assert _access_rows(exception) == 0


def test_detail_reads_the_patient_from_the_workflow_run_context(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    WorkflowRun.objects.create(
        workflow="discharge_to_bill",
        business_key="ENC1001",
        context={"patient": {"name": "ROE, RICHARD", "mrn": "MRN-777"}},
    )
    exception = console_data.exception_item()
    body = client_for(rcm_analyst).get(f"/exceptions/{exception.pk}/").content.decode()
    assert "ROE, RICHARD" in body
    assert "MRN-777" in body
    assert _access_rows(exception) == 1


def test_board_member_sees_no_actions(client_for: Callable[[User], Client], board_member: User) -> None:
    exception = console_data.exception_item()
    body = client_for(board_member).get(f"/exceptions/{exception.pk}/").content.decode()
    assert "Resolve</button>" not in body
    assert "Add comment" not in body


def test_unknown_exception_is_404(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    assert client_for(rcm_analyst).get("/exceptions/999999/").status_code == 404


def test_unknown_action_is_404(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    exception = console_data.exception_item()
    assert client_for(rcm_analyst).post(f"/exceptions/{exception.pk}/delete/").status_code == 404


def test_actions_refuse_get(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    exception = console_data.exception_item()
    assert client_for(rcm_analyst).get(f"/exceptions/{exception.pk}/resolve/").status_code == 405


# Actions ------------------------------------------------------------------------------------------------


def test_assign_to_me_returns_the_updated_workspace_partial(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    exception = console_data.exception_item(message=console_data.message())
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/assign/", {"assign-assignee": rcm_analyst.pk}, **HX
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="exception-workspace">')
    assert "<html" not in body
    # The workspace never carries PHI, so an action's response needs no access row.
    assert "DOE" not in body
    assert _access_rows(exception) == 0
    exception.refresh_from_db()
    assert exception.assignee == rcm_analyst
    assert response["HX-Trigger"] == "exception-changed"


def test_assign_to_a_colleague(
    client_for: Callable[[User], Client], rcm_analyst: User, engineer: User
) -> None:
    exception = console_data.exception_item()
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/assign/", {"assign-assignee": engineer.pk}
    )
    assert response.status_code == 302
    assert response["Location"] == f"/exceptions/{exception.pk}/"
    exception.refresh_from_db()
    assert exception.assignee == engineer


def test_assign_refuses_someone_who_cannot_work_exceptions(
    client_for: Callable[[User], Client], rcm_analyst: User, executive: User
) -> None:
    exception = console_data.exception_item()
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/assign/", {"assign-assignee": executive.pk}, **HX
    )
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    exception.refresh_from_db()
    assert exception.assignee is None


def test_comment_is_added(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    exception = console_data.exception_item()
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/comment/", {"comment-body": "Called the ward clerk."}, **HX
    )
    assert response.status_code == 200
    assert "Called the ward clerk." in response.content.decode()
    assert exception.comments.get().author == rcm_analyst


def test_empty_comment_is_a_form_error(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    exception = console_data.exception_item()
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/comment/", {"comment-body": "  "}, **HX
    )
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert exception.comments.count() == 0


def test_resolve_requires_a_note(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    exception = console_data.exception_item()
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/resolve/", {"resolve-note": ""}, **HX
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "Say how the exception was resolved." in body
    assert body.lstrip().startswith('<div id="exception-workspace">')
    exception.refresh_from_db()
    assert exception.status == ExceptionStatus.OPEN


def test_resolve_without_htmx_shows_the_full_page_with_the_error(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    exception = console_data.exception_item()
    response = client_for(rcm_analyst).post(f"/exceptions/{exception.pk}/resolve/", {"resolve-note": ""})
    assert response.status_code == 400
    assert "<html" in response.content.decode()
    assert "Say how the exception was resolved." in response.content.decode()


def test_resolve_with_a_note_closes_the_exception(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    exception = console_data.exception_item()
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/resolve/", {"resolve-note": "Attending added in the EHR."}, **HX
    )
    assert response.status_code == 200
    exception.refresh_from_db()
    assert exception.status == ExceptionStatus.RESOLVED
    assert exception.resolution_note == "Attending added in the EHR."
    assert "Resolve</button>" not in response.content.decode()


def test_ignore_requires_a_reason(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    exception = console_data.exception_item()
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/ignore/", {"ignore-reason": ""}, **HX
    )
    assert response.status_code == 400
    assert "Say why the exception can be ignored." in response.content.decode()
    exception.refresh_from_db()
    assert exception.status == ExceptionStatus.OPEN


def test_ignore_with_a_reason_closes_the_exception(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    exception = console_data.exception_item()
    client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/ignore/", {"ignore-reason": "Test patient."}, **HX
    )
    exception.refresh_from_db()
    assert exception.status == ExceptionStatus.IGNORED


def test_service_errors_show_as_form_errors(client_for: Callable[[User], Client], rcm_analyst: User) -> None:
    exception = console_data.exception_item(status=ExceptionStatus.RESOLVED)
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/ignore/", {"ignore-reason": "Again."}, **HX
    )
    assert response.status_code == 400
    assert "already resolved" in response.content.decode()


def test_retry_with_nothing_to_retry_is_a_form_error(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    exception = console_data.exception_item(workflow="")
    response = client_for(rcm_analyst).post(f"/exceptions/{exception.pk}/retry/", **HX)
    assert response.status_code == 400
    assert "nothing to retry" in response.content.decode()


def test_retry_makes_the_failed_delivery_due_again(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    delivery = _delivery()
    exception = console_data.exception_item(
        workflow="", kind=ExceptionKind.DESTINATION_DOWN, delivery=delivery
    )
    response = client_for(rcm_analyst).post(f"/exceptions/{exception.pk}/retry/", **HX)
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert "Retried." in response.content.decode()


FIX_FIELDS = [
    {"name": "subscriber_id", "label": "Subscriber id", "required": True},
    {"name": "group_number", "label": "Group number", "required": False},
]


def test_fix_form_is_built_from_the_exception_detail(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    exception = console_data.exception_item(detail={"fix_fields": FIX_FIELDS})
    body = client_for(rcm_analyst).get(f"/exceptions/{exception.pk}/").content.decode()
    assert 'name="fix-subscriber_id"' in body
    assert "Subscriber id" in body
    assert 'name="fix-group_number"' in body


def test_fix_and_resubmit_requires_the_required_fields(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    delivery = _delivery()
    exception = console_data.exception_item(workflow="", delivery=delivery, detail={"fix_fields": FIX_FIELDS})
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/resubmit/", {"fix-group_number": "G-1"}, **HX
    )
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED


def test_fix_and_resubmit_passes_the_fixes_to_the_retry(
    client_for: Callable[[User], Client], rcm_analyst: User
) -> None:
    delivery = _delivery()
    exception = console_data.exception_item(workflow="", delivery=delivery, detail={"fix_fields": FIX_FIELDS})
    response = client_for(rcm_analyst).post(
        f"/exceptions/{exception.pk}/resubmit/",
        {"fix-subscriber_id": " SUB-42 ", "fix-group_number": ""},
        **HX,
    )
    assert response.status_code == 200
    assert "Fixed Subscriber id and retried." in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING


@pytest.mark.parametrize("action", ["comment", "resolve", "ignore"])
def test_closing_a_closed_exception_is_refused_but_commenting_is_not(
    client_for: Callable[[User], Client], rcm_analyst: User, action: str
) -> None:
    exception = console_data.exception_item(status=ExceptionStatus.RESOLVED)
    field = {"comment": "comment-body", "resolve": "resolve-note", "ignore": "ignore-reason"}[action]
    response = client_for(rcm_analyst).post(f"/exceptions/{exception.pk}/{action}/", {field: "my text"}, **HX)
    # Comments on a closed exception are allowed; closing it again is not.
    assert response.status_code == (200 if action == "comment" else 400)
