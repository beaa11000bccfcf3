"""Scheduled workflow jobs (django-q2 calls these by dotted path; each returns a count for the task log)."""

from __future__ import annotations

from django.db import transaction

from workflows import discharge_to_bill, labour, sla


def sla_check() -> int:
    """Raise SLA-breached exceptions for runs overdue in their step (schedule: every 5 minutes)."""
    return sla.sla_check()


def release_bill_holds() -> int:
    """Send the claims whose bill hold has ended (schedule: every 15 minutes)."""
    with transaction.atomic():
        return discharge_to_bill.release_bill_holds()


def labour_allocation() -> int:
    """The labour batch window: allocate the periods whose payroll file has arrived (schedule: daily)."""
    return labour.allocate_waiting_periods()
