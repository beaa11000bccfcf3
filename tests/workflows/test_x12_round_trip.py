"""Discharge to cash over X12 end to end: the 837 goes out, the payer's 277CA and 835 come back as files in its
mailbox, the files connector picks them up and the discharge-to-bill workflow moves: accepted, paid (cash to
the ERP) or denied (an exception), and a cancelled discharge voids the claim by its payer ICN."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.files.poller import poll_connector
from connectors.simulators import hl7_builder
from connectors.simulators.erp import ErpSimulator
from connectors.simulators.rcm import PayerMailbox, RcmSimulator
from connectors.x12.validate import validate_x12
from healthsync.choices import DeliveryStatus, ExceptionKind, RunStatus
from healthsync.models import Connector, Delivery, ExceptionItem
from healthsync.pipeline import process_pending
from healthsync.seed_workflows import X12_CLAIMS_CONNECTOR, X12_REMITS_CONNECTOR, claims_route_x12
from tests.pipeline_support import commits, feed
from tests.workflows.support import workflow_destinations
from workflows.models import ReimbursementRate, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[tuple[RcmSimulator, ErpSimulator, Connector]]:
    mailbox = str(tmp_path / "mailbox")
    with workflow_destinations() as (rcm, erp):
        rcm.mailbox = PayerMailbox(mailbox)
        rcm.deny_one_in = 0  # denials only where a test asks for one
        claims_route_x12(mailbox=mailbox)
        ReimbursementRate.objects.get_or_create(payer_id="*", defaults={"percent": Decimal("80")})
        yield rcm, erp, Connector.objects.get(code=X12_REMITS_CONNECTOR)


def _answers(remits: Connector) -> int:
    """What the files-poll job and the worker do with the mailbox: pick up, read, run the workflow."""
    report = poll_connector(remits, sleep=lambda _: None)  # stored; the worker runs below, not kicked
    assert not report.failed, report.failed
    with commits():
        process_pending()
    return len(report.stored)


def _run(key: str = "V1001", workflow: str = "discharge_to_bill") -> WorkflowRun:
    return WorkflowRun.objects.get(workflow=workflow, business_key=key)


def _steps(run: WorkflowRun) -> set[str]:
    return set(run.steps.values_list("step", flat=True))


def _bill(rcm: RcmSimulator, remits: Connector) -> WorkflowRun:
    feed(hl7_builder.adt_a01(), hl7_builder.dft_p03(), hl7_builder.adt_a03())
    assert Delivery.objects.get(operation="submit_claim").connector.code == X12_CLAIMS_CONNECTOR
    assert _answers(remits) == 1  # the 277CA
    return _run()


def test_the_claim_is_accepted_then_paid_and_the_cash_posted(sims: tuple) -> None:
    rcm, erp, remits = sims
    run = _bill(rcm, remits)
    assert "claim_accepted" in _steps(run) and run.context["claim_id"] == "B000001"

    remit = rcm.remit()
    assert remit is not None and validate_x12(remit).ok
    assert _answers(remits) == 1

    run = _run()
    assert {"claim_submitted", "claim_accepted", "paid", "cash_posted"} <= _steps(run)
    cash = [e["entry"] for e in erp.entries.values() if ":cash:" in e["entry"]["external_reference"]]
    assert len(cash) == 1
    lines = {line["account"]: line for line in cash[0]["lines"]}
    assert lines["1200"]["credit"] == "3250.50"  # paid + contractual + patient share
    remittance = _run("TRC0000001", "remittance")
    assert remittance.status == RunStatus.COMPLETED
    assert not ExceptionItem.objects.open().exists()


def test_a_denial_in_the_835_raises_the_denial_exception(sims: tuple) -> None:
    rcm, _, remits = sims
    rcm.denied_payers.add("AETNA01")
    _bill(rcm, remits)
    rcm.remit()
    _answers(remits)

    run = _run()
    assert "denied" in _steps(run)
    item = ExceptionItem.objects.open().get(business_key="V1001")
    assert item.kind == ExceptionKind.DESTINATION_REJECTED
    assert "denied" in item.reason and "CO-50" in item.reason
    # A denial posts no cash, yet it settles the remittance: the 835's run does not stay open for ever.
    remittance = _run("TRC0000001", "remittance")
    assert remittance.status == RunStatus.COMPLETED
    assert remittance.context["denied"] and not remittance.context["posted"]


def test_a_cancelled_discharge_voids_the_claim_by_its_payer_icn(sims: tuple) -> None:
    rcm, _, remits = sims
    _bill(rcm, remits)

    feed(hl7_builder.adt_a13())

    void = Delivery.objects.get(operation="submit_claim", payload__claim_frequency="8")
    assert void.status == DeliveryStatus.SUCCEEDED and void.response["replaces_icn"] == "ICN000001001"
    [claim] = rcm.batches[void.external_id]["claims"]
    assert (claim["frequency"], claim["original_icn"], claim["accepted"]) == ("8", "ICN000001001", True)
    assert rcm.batches["B000001"]["claims"][0]["voided"]
    assert "claim_voided" in _steps(_run())
    _answers(remits)  # the void's 277CA: the void accepted, not the claim accepted a second time
    assert "void_accepted" in _steps(_run()) and "claim_accepted" not in _steps(_run())
    assert rcm.remit() is None  # nothing left to pay
    assert not ExceptionItem.objects.open().exists()

    # The next discharge bills again; its void would name the new claim's ICN, not the voided one.
    feed(hl7_builder.adt_a03(control_id="A03-2"))
    _answers(remits)
    assert _run().context["claim_version"] == 2
    feed(hl7_builder.adt_a13(control_id="A13-2"))
    second = Delivery.objects.filter(operation="submit_claim", payload__claim_frequency="8").latest("pk")
    assert second.pk != void.pk and second.response["replaces_icn"] == "ICN000003001"
