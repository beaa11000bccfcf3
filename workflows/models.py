"""Workflow runs: one business key (an encounter, a claim, a PO) followed across EHR, RCM and ERP."""

from __future__ import annotations

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

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="steps")
    step = models.CharField(max_length=80)
    occurred_at = models.DateTimeField(help_text="Business time: discharge time, claim submission time.")
    recorded_at = models.DateTimeField(default=timezone.now)
    event = models.ForeignKey(
        CanonicalEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    delivery = models.ForeignKey(Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["occurred_at", "id"]
        indexes = [models.Index(fields=["step", "occurred_at"], name="workflow_step_time")]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="one_step_per_run")]

    def __str__(self) -> str:
        return f"{self.run} {self.step}"
