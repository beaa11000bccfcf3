"""Workflow runs: one business key (an encounter, a claim, a PO) followed across EHR, RCM and ERP."""

from __future__ import annotations

from auditlog.registry import auditlog
from django.db import models
from django.utils import timezone

from healthsync.choices import RunStatus
from healthsync.models import CanonicalEvent, Delivery


class WorkflowRun(models.Model):
    """One business key's way through one workflow, with the account data gathered so far."""

    workflow = models.CharField(max_length=80)
    business_key = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.ACTIVE)
    step = models.CharField(max_length=80, blank=True, help_text="The last step reached.")
    context = models.JSONField(default=dict, blank=True, help_text="Account data merged from its events.")
    facility = models.CharField(max_length=80, blank=True)
    patient_class = models.CharField(max_length=10, blank=True)
    payer = models.CharField(max_length=120, blank=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [models.UniqueConstraint(fields=["workflow", "business_key"], name="one_run_per_key")]
        permissions = [("view_kpis", "Can view KPI dashboards")]

    def __str__(self) -> str:
        return f"{self.workflow} {self.business_key}"


class WorkflowStep(models.Model):
    """A step a run reached, with the business time it happened and the event or delivery behind it."""

    # Indexed by one_step_per_run (run, step); the delivery only where a step has one. Every index costs a
    # write per step, and a chunk writes a step or two per message.
    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="steps", db_index=False)
    step = models.CharField(max_length=80)
    occurred_at = models.DateTimeField(help_text="Business time: discharge time, claim submission time.")
    recorded_at = models.DateTimeField(default=timezone.now)
    event = models.ForeignKey(
        CanonicalEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["occurred_at", "id"]
        indexes = [
            models.Index(fields=["step", "occurred_at"], name="workflow_step_time"),
            models.Index(
                fields=["delivery"], name="workflow_step_delivery", condition=models.Q(delivery__isnull=False)
            ),
        ]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="one_step_per_run")]

    def __str__(self) -> str:
        return f"{self.run} {self.step}"


class AllocationRule(models.Model):
    """A governed labour-cost rule: which share of a payroll department's cost goes to which cost centre."""

    department = models.CharField(max_length=80, help_text="Payroll department code as in the payroll file.")
    cost_center = models.CharField(max_length=80)
    gl_account = models.CharField(max_length=20, default="6000", help_text="Salaries expense account.")
    share = models.DecimalField(max_digits=5, decimal_places=2, help_text="Percent of the department's cost.")
    is_active = models.BooleanField(default=True)
    approved_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["department", "cost_center"]
        constraints = [
            models.UniqueConstraint(fields=["department", "cost_center"], name="one_allocation_per_target")
        ]

    def __str__(self) -> str:
        return f"{self.department} → {self.cost_center} {self.share}%"


class ParLevel(models.Model):
    """The stock a location keeps of a supply item; usage below it raises a requisition."""

    item_code = models.CharField(max_length=80)
    location = models.CharField(max_length=80)
    description = models.CharField(max_length=200, blank=True)
    par = models.PositiveIntegerField(help_text="Level to refill to.")
    reorder_point = models.PositiveIntegerField(help_text="Order when on hand falls to this or below.")
    on_hand = models.IntegerField(default=0)
    unit_cost = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    supplier = models.CharField(max_length=80, blank=True)
    charge_code = models.CharField(
        max_length=40,
        blank=True,
        db_index=True,
        help_text="Chargemaster code (FT1-7) whose charges use this item; blank: usage comes from a materials feed.",
    )

    class Meta:
        ordering = ["location", "item_code"]
        constraints = [models.UniqueConstraint(fields=["item_code", "location"], name="one_par_per_item")]

    def __str__(self) -> str:
        return f"{self.item_code} @ {self.location}"


# Allocation rules and par levels are governed configuration: every change is in the audit log.
auditlog.register(AllocationRule)
auditlog.register(ParLevel)


class ReimbursementRate(models.Model):
    """A governed payer contract rate: the share of billed charges a payer is expected to reimburse.

    The row with payer_id "*" is the default for payers without a rate of their own; with neither, no
    forecast is posted.
    """

    payer_id = models.CharField(
        max_length=80, unique=True, help_text='Payer id as on the claim (NM1*PR); "*" for the default.'
    )
    payer_name = models.CharField(max_length=120, blank=True)
    percent = models.DecimalField(max_digits=5, decimal_places=2, help_text="Percent of billed charges.")
    is_active = models.BooleanField(default=True)
    approved_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["payer_id"]

    def __str__(self) -> str:
        return f"{self.payer_id} {self.percent}%"


auditlog.register(ReimbursementRate)
