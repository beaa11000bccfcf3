"""The resources: role permissions as in the console, PHI masked for roles that may not see it, filters, pages."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from healthsync.choices import ExceptionStatus
from healthsync.models import CanonicalEvent
from tests.console_data import PATIENT_MRN, PATIENT_NAME, billed_run, days_ago, exception_item, message
from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db

LISTS = {
    "/api/v1/systems/": "engineer",
    "/api/v1/connectors/": "engineer",
    "/api/v1/mapping-sets/": "engineer",
    "/api/v1/mapping-versions/": "engineer",
    "/api/v1/schema-versions/": "engineer",
    "/api/v1/data-ownership/": "engineer",
    "/api/v1/messages/": "engineer",
    "/api/v1/events/": "engineer",
    "/api/v1/workflow-runs/": "rcm_analyst",
    "/api/v1/exceptions/": "rcm_analyst",
    "/api/v1/kpis/": "executive",
}


def _user_with(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="unused-in-tests")
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=user.pk)


@pytest.mark.parametrize(("url", "role"), LISTS.items())
def test_each_resource_answers_its_role_and_refuses_an_outsider(
    url, role, request, api_for, outsider
) -> None:
    assert api_for(request.getfixturevalue(role)).get(url).status_code == 200
    assert api_for(outsider).get(url).status_code == 403


def test_the_board_reads_configuration_but_not_the_message_store(board_member, api_for) -> None:
    client = api_for(board_member)

    assert client.get("/api/v1/mapping-sets/").status_code == 200
    assert client.get("/api/v1/messages/").status_code == 403


def test_messages_search_filters_and_pages(engineer, api_for) -> None:
    for number in range(3):
        message(control_id=f"CTRL{number}", dedupe_key=None, status="processed" if number else "failed")
    old = message(control_id="OLD", received_at=timezone.now() - timedelta(days=10))
    client = api_for(engineer)

    failed = client.get("/api/v1/messages/?status=failed").json()
    recent = client.get(
        "/api/v1/messages/", {"received_after": (timezone.now() - timedelta(days=1)).isoformat()}
    )
    page = client.get("/api/v1/messages/?limit=2&offset=0").json()

    assert [row["control_id"] for row in failed["results"]] == ["CTRL0"]
    assert old.pk not in [row["id"] for row in recent.json()["results"]]
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]
    assert "raw" not in page["results"][0]


def test_a_message_body_is_shown_and_audited_for_a_role_that_may_see_phi(engineer, api_for) -> None:
    stored = message()

    body = api_for(engineer).get(f"/api/v1/messages/{stored.pk}/").json()

    assert PATIENT_NAME in body["raw"]
    assert body["phi_masked"] is False
    assert LogEntry.objects.get_for_object(stored).filter(action=LogEntry.Action.ACCESS).count() == 1


def test_a_message_body_is_masked_for_a_role_without_phi(api_for) -> None:
    stored = message()
    reader = _user_with("auditor", "view_message")

    response = api_for(reader).get(f"/api/v1/messages/{stored.pk}/")

    body = response.json()
    assert body["raw"] is None and body["phi_masked"] is True
    assert PATIENT_NAME not in response.content.decode() and PATIENT_MRN not in response.content.decode()
    assert not LogEntry.objects.get_for_object(stored).filter(action=LogEntry.Action.ACCESS).exists()


def test_event_payloads_are_masked_without_phi(engineer, api_for) -> None:
    CanonicalEvent.objects.create(
        type="encounter.discharged",
        source="ehr",
        subject="ENC1001",
        idempotency_key="k1",
        data={"patient": {"mrn": PATIENT_MRN}},
        correlation={"patient": PATIENT_MRN},
    )
    reader = _user_with("event-reader", "view_canonicalevent")

    masked = api_for(reader).get("/api/v1/events/?type=encounter.discharged").json()["results"][0]
    shown = api_for(engineer).get("/api/v1/events/?subject=ENC1001").json()["results"][0]

    assert masked["data"] is None and masked["correlation"] is None and masked["phi_masked"] is True
    assert shown["data"] == {"patient": {"mrn": PATIENT_MRN}}


def test_run_context_is_phi(rcm_analyst, api_for) -> None:
    run = billed_run("ENC1001", days_ago(2), 30)
    WorkflowRun.objects.filter(pk=run.pk).update(context={"patient_name": PATIENT_NAME})
    reader = _user_with("run-reader", "view_workflowrun")

    shown = api_for(rcm_analyst).get(f"/api/v1/workflow-runs/{run.pk}/").json()
    masked = api_for(reader).get(f"/api/v1/workflow-runs/{run.pk}/").json()

    assert shown["context"] == {"patient_name": PATIENT_NAME}
    assert [step["step"] for step in shown["steps"]] == ["discharged", "claim_submitted"]
    assert masked["context"] is None and masked["phi_masked"] is True


def test_exception_detail_shows_the_patient_only_to_roles_with_phi(
    rcm_analyst, board_member, api_for
) -> None:
    item = exception_item(message=message())

    shown = api_for(rcm_analyst).get(f"/api/v1/exceptions/{item.pk}/").json()
    masked = api_for(board_member).get(f"/api/v1/exceptions/{item.pk}/").json()

    assert shown["patient"] == {"name": "DOE, JANE", "mrn": PATIENT_MRN}
    assert masked["patient"] is None and masked["phi_masked"] is True
    assert masked["reason"] == item.reason


def test_exceptions_are_worked_through_the_services(rcm_analyst, api_for) -> None:
    item = exception_item()
    client = api_for(rcm_analyst)
    base = f"/api/v1/exceptions/{item.pk}"

    assigned = client.post(f"{base}/assign/", {"assignee": rcm_analyst.pk}, format="json").json()
    commented = client.post(f"{base}/comment/", {"body": "Calling the ward."}, format="json")
    resolved = client.post(f"{base}/resolve/", {"note": "Attending added in the EHR."}, format="json").json()

    assert assigned["assignee"] == "rcm" and assigned["status"] == ExceptionStatus.IN_PROGRESS
    assert commented.status_code == 201 and commented.json()["author"] == "rcm"
    assert resolved["status"] == ExceptionStatus.RESOLVED
    assert resolved["resolved_by"] == "rcm"
    assert [c["body"] for c in resolved["comments"]] == ["Calling the ward."]


def test_retry_refuses_fields_the_exception_cannot_fix(rcm_analyst, api_for) -> None:
    item = exception_item(detail={"fix_fields": [{"name": "attending", "label": "Attending"}]})

    response = api_for(rcm_analyst).post(
        f"/api/v1/exceptions/{item.pk}/retry/", {"fixes": {"payer": "ACME"}}, format="json"
    )

    assert response.status_code == 400
    assert "cannot be fixed on this exception: payer" in response.json()["detail"]


def test_a_role_that_only_reads_exceptions_cannot_work_them(board_member, api_for) -> None:
    item = exception_item()

    response = api_for(board_member).post(
        f"/api/v1/exceptions/{item.pk}/resolve/", {"note": "x"}, format="json"
    )

    assert response.status_code == 403
    item.refresh_from_db()
    assert item.status == ExceptionStatus.OPEN


def test_exception_filters(rcm_analyst, api_for) -> None:
    exception_item(business_key="A")
    exception_item(business_key="B", status=ExceptionStatus.RESOLVED)
    client = api_for(rcm_analyst)

    open_keys = [
        row["business_key"] for row in client.get("/api/v1/exceptions/?is_open=true").json()["results"]
    ]
    unassigned = client.get("/api/v1/exceptions/?unassigned=true&kind=missing_data").json()["count"]

    assert open_keys == ["A"]
    assert unassigned == 2


def test_kpis_come_from_the_dashboard_selector(executive, api_for) -> None:
    billed_run("ENC1", days_ago(5), 48)
    billed_run("ENC2", days_ago(4), None, amount=Decimal("2500.00"))
    exception_item(amount=Decimal("700.00"))

    body = api_for(executive).get("/api/v1/kpis/").json()

    assert body["discharge_to_bill"]["count"] == 1
    assert body["discharge_to_bill"]["median_hours"] == 48.0
    assert body["runs_discharged"] == 2 and body["runs_billed"] == 1
    assert Decimal(body["dnfb_amount"]) == Decimal("2500.00")
    assert body["open_exception_count"] == 1
    assert Decimal(body["money_at_risk"]) == Decimal("700.00")
