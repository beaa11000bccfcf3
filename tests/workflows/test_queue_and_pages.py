"""The exception queue's filters, bulk actions, SLA colours and recovery actions; the run and close pages; SLA check."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from connectors.simulators import hl7_builder
from healthsync import services
from healthsync.choices import ExceptionKind, ExceptionStatus, MessageStatus, RunStatus
from healthsync.models import ExceptionComment, ExceptionItem, Message
from tests.pipeline_support import commits, feed
from tests.workflows.support import emit, workflow_destinations
from workflows.definitions import DISCHARGE_TO_BILL, WORKFLOWS
from workflows.models import WorkflowRun, WorkflowStep
from workflows.selectors import close_readiness
from workflows.sla import sla_check
from workflows.views import sla_state

pytestmark = pytest.mark.django_db


@pytest.fixture
def sims() -> Iterator[tuple]:
    with workflow_destinations() as pair:
        yield pair


def _item(key: str, **fields: object) -> ExceptionItem:
    defaults = {
        "kind": ExceptionKind.MISSING_DATA,
        "reason": f"{key} is missing insurance",
        "workflow": "discharge_to_bill",
    }
    return ExceptionItem.objects.create(business_key=key, **{**defaults, **fields})


# Declarations --------------------------------------------------------------------------------------------


def test_every_workflow_declares_steps_whose_transitions_name_its_own_steps() -> None:
    for workflow in WORKFLOWS.values():
        names = set(workflow.step_names)
        assert workflow.latency in ("real-time", "batch") and workflow.criticality
        for step in workflow.steps:
            assert set(step.next) <= names, (workflow.code, step.name)
    assert DISCHARGE_TO_BILL.allows("discharged", "discharge_cancelled")
    assert not DISCHARGE_TO_BILL.allows("cash_posted", "discharged")


# Queue ---------------------------------------------------------------------------------------------------


def test_the_queue_filters_by_facility_payer_age_and_amount(
    rcm_analyst: User, client_for: Callable[[User], Client]
) -> None:
    old = _item("V-OLD", facility="NORTH", payer="Aetna", amount=Decimal("500"))
    ExceptionItem.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=5))
    _item("V-NEW", facility="SOUTH", payer="Cigna", amount=Decimal("50"))
    client = client_for(rcm_analyst)

    def keys(query: str) -> list[str]:
        page = client.get(f"/exceptions/?{query}").context["page"]
        return [item.business_key for item in page.object_list]

    assert keys("facility=NORTH") == ["V-OLD"]
    assert keys("payer=cig") == ["V-NEW"]
    assert keys("age=3") == ["V-OLD"]
    assert keys("min_amount=100") == ["V-OLD"]
    assert keys("sort=-amount") == ["V-OLD", "V-NEW"]
    # A malformed amount is ignored, the other filters still apply.
    assert keys("min_amount=abc&facility=SOUTH") == ["V-NEW"]


def test_the_queue_colours_rows_by_sla(rcm_analyst: User, client_for: Callable[[User], Client]) -> None:
    late = _item("V-LATE")
    ExceptionItem.objects.filter(pk=late.pk).update(created_at=timezone.now() - timedelta(days=2))
    _item("V-OK")
    response = client_for(rcm_analyst).get("/exceptions/")
    html = response.content.decode()
    assert 'class="sla-late"' in html and 'class="sla-ok"' in html
    assert "Overdue" in html
    assert 'accesskey="b"' in html and "j</kbd>" in html


def test_sla_state_is_due_soon_in_the_last_quarter() -> None:
    item = ExceptionItem(kind=ExceptionKind.MISSING_DATA, created_at=timezone.now() - timedelta(hours=20))
    assert sla_state(item) == "due-soon"
    item.status = ExceptionStatus.RESOLVED
    assert sla_state(item) == "closed"


def test_bulk_assign_to_me_and_close(rcm_analyst: User, client_for: Callable[[User], Client]) -> None:
    first, second = _item("V1"), _item("V2")
    client = client_for(rcm_analyst)

    response = client.post("/exceptions/bulk/", {"action": "assign_me", "ids": [first.pk, second.pk]})
    assert response.status_code == 302
    assert set(ExceptionItem.objects.values_list("assignee__username", flat=True)) == {"rcm"}

    client.post(
        "/exceptions/bulk/", {"action": "resolve", "ids": [first.pk, second.pk], "note": "Duplicates"}
    )
    assert set(ExceptionItem.objects.values_list("status", flat=True)) == {ExceptionStatus.RESOLVED}


def test_bulk_close_without_a_note_changes_nothing_and_says_why(
    rcm_analyst: User, client_for: Callable[[User], Client]
) -> None:
    item = _item("V1")
    response = client_for(rcm_analyst).post(
        "/exceptions/bulk/", {"action": "ignore", "ids": [item.pk]}, follow=True
    )
    assert "Say why they are closed" in response.content.decode()
    item.refresh_from_db()
    assert item.is_open


def test_bulk_actions_are_forbidden_to_roles_that_do_not_work_exceptions(
    executive: User, outsider: User, client_for: Callable[[User], Client]
) -> None:
    item = _item("V1")
    for user in (executive, outsider):
        assert (
            client_for(user).post("/exceptions/bulk/", {"action": "assign_me", "ids": [item.pk]}).status_code
            == 403
        )


def test_bulk_retry_sends_each_claim_once(
    sims: tuple, rcm_analyst: User, client_for: Callable[[User], Client]
) -> None:
    rcm, _ = sims
    rcm.forced_status = 400
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())
    rcm.forced_status = None
    item = ExceptionItem.objects.get(kind=ExceptionKind.DESTINATION_REJECTED)

    with commits():
        client_for(rcm_analyst).post("/exceptions/bulk/", {"action": "retry", "ids": [item.pk]})
    with commits():
        client_for(rcm_analyst).post("/exceptions/bulk/", {"action": "retry", "ids": [item.pk]})

    assert rcm.claim_count == 1
    item.refresh_from_db()
    assert item.status == ExceptionStatus.RESOLVED


def test_route_back_puts_the_exception_in_a_work_queue(
    rcm_analyst: User, client_for: Callable[[User], Client]
) -> None:
    item = _item("V1", assignee=rcm_analyst, status=ExceptionStatus.IN_PROGRESS)
    response = client_for(rcm_analyst).post(
        f"/exceptions/{item.pk}/route_back/", {"route-queue": "registration", "route-note": "Card on file"}
    )
    assert response.status_code == 302
    item.refresh_from_db()
    assert item.status == ExceptionStatus.WAITING and item.assignee is None
    assert item.detail["work_queue"] == "registration"
    assert "Patient access" in ExceptionComment.objects.get().body


def test_route_back_to_an_unknown_queue_is_a_form_error(
    rcm_analyst: User, client_for: Callable[[User], Client]
) -> None:
    item = _item("V1")
    response = client_for(rcm_analyst).post(f"/exceptions/{item.pk}/route_back/", {"route-queue": "nowhere"})
    assert response.status_code == 400
    item.refresh_from_db()
    assert item.status == ExceptionStatus.OPEN


def test_replay_processes_a_new_copy_of_the_source_message(
    sims: tuple, rcm_analyst: User, client_for: Callable[[User], Client]
) -> None:
    (message,) = feed(hl7_builder.bar_p05(include_diagnosis=False))
    item = ExceptionItem.objects.get(message=message)

    with commits():
        response = client_for(rcm_analyst).post(f"/exceptions/{item.pk}/replay/")

    assert response.status_code == 302
    replay = Message.objects.get(replay_of=message)
    assert bytes(replay.raw) == bytes(message.raw)
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED  # the original is kept as it was


def test_replay_without_a_source_message_is_refused(
    rcm_analyst: User, client_for: Callable[[User], Client]
) -> None:
    item = _item("V1")
    response = client_for(rcm_analyst).post(f"/exceptions/{item.pk}/replay/")
    assert response.status_code == 400
    assert "no source message" in response.content.decode()


# SLA check -----------------------------------------------------------------------------------------------


def _stuck_run(step: str, hours_ago: int, status: str = RunStatus.ACTIVE) -> WorkflowRun:
    run = WorkflowRun.objects.create(
        workflow="discharge_to_bill", business_key="V9", step=step, status=status
    )
    WorkflowStep.objects.create(run=run, step=step, occurred_at=timezone.now() - timedelta(hours=hours_ago))
    return run


def test_a_run_past_its_step_sla_raises_one_exception(db: None) -> None:
    _stuck_run("discharged", hours_ago=24 * 4)

    assert sla_check() == 1
    assert sla_check() == 0  # raised once
    item = ExceptionItem.objects.get()
    assert item.kind == ExceptionKind.SLA_BREACHED
    assert "Discharged" in item.reason and item.sla_due_at


def test_a_run_within_its_sla_or_already_in_the_queue_raises_nothing(db: None) -> None:
    run = _stuck_run("discharged", hours_ago=2)
    assert sla_check() == 0
    WorkflowStep.objects.filter(run=run).update(occurred_at=timezone.now() - timedelta(days=5))
    _item("V9")
    assert sla_check() == 0


def test_resolving_an_sla_exception_moves_the_run_on(sims: tuple, rcm_analyst: User) -> None:
    rcm, _ = sims
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03())
    run = WorkflowRun.objects.get(business_key="V1001")
    run.status = RunStatus.BLOCKED
    run.save()
    WorkflowStep.objects.create(run=run, step="discharged", occurred_at=timezone.now() - timedelta(days=5))
    item = _item("V1001", kind=ExceptionKind.SLA_BREACHED)

    with commits():
        services.exception_resolve(exception=item, note="Coding done", actor=rcm_analyst)

    assert rcm.claim_count == 1


# Close readiness and the run page -------------------------------------------------------------------------


def test_close_readiness_lists_dnfb_unposted_remits_and_unmatched_invoices(sims: tuple) -> None:
    feed(
        hl7_builder.adt_a01(include_insurance=False),
        hl7_builder.dft_p03(),
        hl7_builder.adt_a03(include_insurance=False),
    )
    WorkflowRun.objects.create(workflow="remittance", business_key="TRN-1", amount=Decimal("10"))
    WorkflowStep.objects.create(
        run=WorkflowRun.objects.get(business_key="TRN-1"),
        step="received",
        occurred_at=timezone.now().replace(year=2026, month=1, day=10),
    )
    emit(
        "purchase_order.approved",
        "PO-1",
        {"po_number": "PO-1", "lines": [{"line": 1, "quantity": "1", "unit_price": "5"}]},
        ref="p",
    )
    run = WorkflowRun.objects.get(business_key="PO-1")
    WorkflowStep.objects.create(
        run=run, step="invoice_received", occurred_at=timezone.now().replace(year=2026, month=1, day=11)
    )
    run.context["invoices"] = {"I-1": {"status": "mismatch", "amount": "6.00"}}
    run.save()

    readiness = close_readiness("2026-01")

    assert [item.business_key for item in readiness.dnfb] == ["V1001"]
    assert readiness.dnfb_amount == Decimal("3250.50")
    assert [item.business_key for item in readiness.unposted_remits] == ["TRN-1"]
    assert [item.business_key for item in readiness.unmatched_invoices] == ["PO-1 / I-1"]
    assert not readiness.ready
    assert close_readiness("2026-03").dnfb == []


def test_the_close_page_shows_the_period_and_rejects_a_bad_one(
    rcm_analyst: User, client_for: Callable[[User], Client]
) -> None:
    client = client_for(rcm_analyst)
    response = client.get("/workflows/close/?period=2026-01")
    assert response.status_code == 200 and "2026-01 is not ready to close" in response.content.decode()
    bad = client.get("/workflows/close/?period=Jan")
    assert bad.status_code == 400 and "is not a period" in bad.content.decode()


def test_the_run_page_shows_one_encounter_across_ehr_rcm_and_erp(
    sims: tuple, rcm_analyst: User, engineer: User, client_for: Callable[[User], Client]
) -> None:
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())
    run = WorkflowRun.objects.get(business_key="V1001")
    emit(
        "remittance.received",
        "TRN-5",
        {
            "trace_number": "TRN-5",
            "amount": "3250.50",
            "claim_count": 1,
            "payment_date": "2026-02-01",
            "claims": [
                {
                    "claim_id": run.context["claim_id"],
                    "patient_control_number": "V1001",
                    "paid_amount": "3250.50",
                }
            ],
        },
        ref="TRN-5",
    )

    html = client_for(engineer).get(f"/workflows/runs/{run.pk}/").content.decode()
    for text in (
        "Discharged",
        "Claim submitted",
        "Accrual posted",
        "Cash posted",
        "Remittance received",
        "ERP general ledger",
    ):
        assert text in html, text
    a03 = Message.objects.get(message_type="ADT^A03")
    assert f'href="/messages/{a03.pk}/"' in html
    # Revenue-cycle staff see the trace but not links into the raw message store.
    rcm_html = client_for(rcm_analyst).get(f"/workflows/runs/{run.pk}/").content.decode()
    assert f'href="/messages/{a03.pk}/"' not in rcm_html and f"message #{a03.pk}" in rcm_html


def test_run_pages_are_closed_to_outsiders(outsider: User, client_for: Callable[[User], Client]) -> None:
    run = WorkflowRun.objects.create(workflow="discharge_to_bill", business_key="V1")
    client = client_for(outsider)
    for url in (f"/workflows/runs/{run.pk}/", "/workflows/runs/", "/workflows/close/"):
        assert client.get(url).status_code == 403


def test_the_run_list_finds_runs_by_key(rcm_analyst: User, client_for: Callable[[User], Client]) -> None:
    WorkflowRun.objects.create(workflow="discharge_to_bill", business_key="V777")
    WorkflowRun.objects.create(workflow="procure_to_pay", business_key="PO-1")
    html = client_for(rcm_analyst).get("/workflows/runs/?q=V77").content.decode()
    assert "V777" in html and "PO-1" not in html
