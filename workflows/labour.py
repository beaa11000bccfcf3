"""Labour cost allocation: a batch window reads the payroll file, allocates each department's cost to cost
centres by the governed AllocationRule rows and posts one balanced journal per period to the ERP.

The payroll file arrives through a file connector (connectors/files: a folder or SFTP drop polled by the
"files-poll" job, message type "payroll_allocation"); its mapping emits payroll.file_received, which marks the
periods in the file as waiting. The "labour-allocation" job (the batch window) allocates every waiting period
from the stored file's bytes.

The journal's external reference is the period, so a rerun of the same period posts nothing new; a rerun with
a different file for an already-posted period raises a mismatch instead of posting a second journal.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from healthsync.choices import DeliveryStatus, ExceptionKind, RunStatus
from healthsync.deliveries import connector_for_operation, delivery_request
from healthsync.models import CanonicalEvent, Delivery, Message
from healthsync.registry import workflow_registry
from workflows.exceptions import exception_raise_or_refresh
from workflows.models import AllocationRule, WorkflowRun
from workflows.runs import record_step, run_for

if TYPE_CHECKING:
    from django.contrib.auth.models import User

WORKFLOW = "labour_allocation"
JOURNAL_OPERATION = "post_journal"
ACCRUED_PAYROLL_ACCOUNT = ("2100", "Accrued payroll")
REQUIRED_COLUMNS = ("employee_id", "department", "period", "gross_pay")
COST_COLUMNS = ("gross_pay", "employer_taxes", "benefits")
CENT = Decimal("0.01")


class PayrollFileError(ValueError):
    """The payroll file cannot be read; `errors` names each bad row and column."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class PayrollLine:
    """One employee's labour cost in one period and department."""

    employee_id: str
    department: str
    period: str
    cost: Decimal


PAYROLL_MESSAGE_TYPE = "payroll_allocation"
PAYROLL_EVENT = "payroll.file_received"


def register() -> None:
    workflow_registry.on_delivery(WORKFLOW, on_delivery)
    if on_payroll_file not in workflow_registry.handlers_for(PAYROLL_EVENT):
        workflow_registry.on_event(PAYROLL_EVENT, on_payroll_file)


def on_payroll_file(event: CanonicalEvent) -> None:
    """A payroll file was stored: each period in it waits for the batch window (the newest file wins)."""
    periods = sorted({str(row.get("period") or "") for row in event.data.get("rows") or []} - {""})
    for period in periods or [event.subject]:
        run = run_for(WORKFLOW, period)
        run.context["pending_message_id"] = event.message_id
        run.context["source"] = event.source
        record_step(run, "payroll_received", event.occurred_at, event=event, note=event.source_ref)
        if run.status == RunStatus.COMPLETED and run.context.get("journal_key"):
            run.step = "journal_posted"
        run.save()


def allocate_waiting_periods() -> int:
    """The batch window: allocate every period whose payroll file has arrived; returns how many were run.

    A period's file is taken off the waiting list in the same transaction that allocates it, so a window
    that runs twice allocates it once (and the journal's key makes a second posting impossible anyway).
    """
    count = 0
    waiting = WorkflowRun.objects.filter(workflow=WORKFLOW, context__has_key="pending_message_id")
    for period in waiting.order_by("business_key").values_list("business_key", flat=True):
        with transaction.atomic():
            run = run_for(WORKFLOW, period)
            message_id = run.context.pop("pending_message_id", None)
            if message_id is None:
                continue
            run.save()
            message = Message.objects.filter(pk=message_id).first()
            raw = bytes(message.raw) if message is not None else b""
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                text = ""
            labour_allocation_run(period=period, csv_text=text, source=run.context.get("source") or "payroll")
            count += 1
    return count


def read_payroll_csv(text: str) -> list[PayrollLine]:
    """Parse a payroll CSV (header row; employee_id, department, period YYYY-MM, gross_pay, optional
    employer_taxes, benefits); every bad row is reported, none is skipped silently."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise PayrollFileError([f"the header lacks the column(s) {', '.join(missing)}"])
    lines, errors = [], []
    for number, row in enumerate(reader, start=2):
        row = {(key or "").strip(): (value or "").strip() for key, value in row.items()}
        for name in ("employee_id", "department", "period"):
            if not row.get(name):
                errors.append(f"row {number}: {name} is empty")
        period = row.get("period", "")
        if period and (len(period) != 7 or period[4] != "-" or not period.replace("-", "").isdigit()):
            errors.append(f"row {number}: period must be YYYY-MM")
        cost = Decimal("0")
        for name in COST_COLUMNS:
            try:
                cost += Decimal(row.get(name) or "0")
            except InvalidOperation:
                errors.append(f"row {number}: {name} is not a decimal amount")
        if not errors or not errors[-1].startswith(f"row {number}:"):
            lines.append(PayrollLine(row["employee_id"], row["department"], period, cost.quantize(CENT)))
    if errors:
        raise PayrollFileError(errors)
    return lines


def allocate(
    lines: list[PayrollLine], rules: list[AllocationRule]
) -> tuple[dict[tuple[str, str], Decimal], list[str]]:
    """Department cost split by rule shares, remainders to the largest share so cents never go missing.

    Returns {(gl account, cost centre): amount} and the problems (departments without complete rules).
    """
    by_department: dict[str, Decimal] = defaultdict(Decimal)
    for line in lines:
        by_department[line.department] += line.cost
    rules_by_department: dict[str, list[AllocationRule]] = defaultdict(list)
    for rule in rules:
        rules_by_department[rule.department].append(rule)
    allocated: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    problems = []
    for department, cost in sorted(by_department.items()):
        department_rules = sorted(
            rules_by_department.get(department, []), key=lambda r: (-r.share, r.cost_center)
        )
        total_share = sum((rule.share for rule in department_rules), Decimal("0"))
        if not department_rules:
            problems.append(f"department {department} has no allocation rule")
            continue
        if total_share != 100:
            problems.append(f"the rules of department {department} add up to {total_share}%, not 100%")
            continue
        parts = [(rule, (cost * rule.share / 100).quantize(CENT)) for rule in department_rules]
        remainder = cost - sum((amount for _, amount in parts), Decimal("0"))
        parts[0] = (parts[0][0], parts[0][1] + remainder)
        for rule, amount in parts:
            allocated[(rule.gl_account, rule.cost_center)] += amount
    return dict(allocated), problems


@transaction.atomic
def labour_allocation_run(
    *, period: str, csv_text: str, source: str = "payroll", actor: User | None = None
) -> WorkflowRun:
    """Allocate one period's payroll and ask the ERP for its journal (once per period)."""
    digest = hashlib.sha256(csv_text.encode()).hexdigest()
    run = run_for(WORKFLOW, period)
    try:
        lines = [line for line in read_payroll_csv(csv_text) if line.period == period]
    except PayrollFileError as error:
        _raise(
            run,
            ExceptionKind.MAPPING_FAILED,
            f"The payroll file for {period} cannot be read: {error}",
            {"errors": error.errors},
        )
        return run
    if (
        run.context.get("file_sha256")
        and run.context["file_sha256"] != digest
        and run.context.get("journal_key")
    ):
        _raise(
            run,
            ExceptionKind.MISMATCH,
            f"The payroll file for {period} changed after its journal was posted: post an adjustment in the ERP.",
            {"posted_sha256": run.context["file_sha256"], "new_sha256": digest},
        )
        return run
    if run.context.get("journal_key"):
        return run  # the same period again: the journal exists or is on its way
    record_step(run, "payroll_read", timezone.now(), note=f"{len(lines)} lines")
    rules = list(AllocationRule.objects.filter(is_active=True))
    allocated, problems = allocate(lines, rules)
    if problems or not allocated:
        _raise(
            run,
            ExceptionKind.MISSING_DATA,
            f"Labour cost for {period} cannot be allocated: "
            + "; ".join(problems or ["the file has no rows for it"]),
            {"problems": problems},
        )
        return run
    total = sum(allocated.values(), Decimal("0"))
    key = f"{source}:labour:{period}:1"
    journal_lines = [
        {
            "account": account,
            "account_name": "Salaries and wages",
            "cost_center": center,
            "debit": f"{amount:.2f}",
            "credit": "0.00",
        }
        for (account, center), amount in sorted(allocated.items())
    ]
    journal_lines.append(
        {
            "account": ACCRUED_PAYROLL_ACCOUNT[0],
            "account_name": ACCRUED_PAYROLL_ACCOUNT[1],
            "cost_center": "",
            "debit": "0.00",
            "credit": f"{total:.2f}",
        }
    )
    run.context.update({"file_sha256": digest, "journal_key": key, "total": str(total), "lines": len(lines)})
    run.amount = total
    record_step(run, "allocated", timezone.now(), note=f"{len(allocated)} cost centre lines")
    run.status = RunStatus.ACTIVE
    run.save()
    delivery_request(
        connector=connector_for_operation(JOURNAL_OPERATION),
        operation=JOURNAL_OPERATION,
        payload={
            "external_reference": key,
            "journal_date": f"{period}-01",
            "period": period,
            "currency": "USD",
            "description": f"Labour cost allocation {period}",
            "source_document": f"payroll {period}",
            "lines": journal_lines,
        },
        idempotency_key=key,
        workflow=WORKFLOW,
        business_key=period,
    )
    return run


def on_delivery(delivery: Delivery) -> None:
    run = run_for(WORKFLOW, delivery.business_key)
    if delivery.status == DeliveryStatus.SUCCEEDED:
        run.context["journal_document_number"] = delivery.external_id
        record_step(run, "journal_posted", timezone.now(), delivery=delivery, note=delivery.external_id)
        run.status = RunStatus.COMPLETED
        run.completed_at = run.completed_at or timezone.now()
    elif delivery.status == DeliveryStatus.FAILED:
        run.status = RunStatus.BLOCKED
    run.save()


def _raise(run: WorkflowRun, kind: str, reason: str, detail: dict) -> None:
    exception_raise_or_refresh(run, kind, reason, detail=detail)
    run.save()
