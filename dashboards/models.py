"""Rollups the dashboards read instead of scanning workflow steps: one fact row per run, kept current by the worker."""

from __future__ import annotations

from django.db import models


class RunFact(models.Model):
    """One workflow run flattened for the KPIs: its facets, amounts, milestone times and durations in hours."""

    run = models.OneToOneField(
        "workflows.WorkflowRun", primary_key=True, on_delete=models.CASCADE, related_name="+"
    )
    workflow = models.CharField(max_length=80)
    business_key = models.CharField(max_length=200)
    facility = models.CharField(max_length=80, blank=True)
    payer = models.CharField(max_length=120, blank=True)
    patient_class = models.CharField(max_length=10, blank=True)
    status = models.CharField(max_length=10)
    cancelled = models.BooleanField(default=False)
    # The time a run is filtered by: discharge (discharge-to-bill), PO approval, remittance receipt, first step.
    anchor_at = models.DateTimeField(null=True)
    done_at = models.DateTimeField(null=True, help_text="Claim submitted, invoice posted, cash posted.")
    invoice_received_at = models.DateTimeField(null=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    late_amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    dtb_hours = models.FloatField(null=True, help_text="Claim submitted - discharge.")
    claim_lag_hours = models.FloatField(null=True, help_text="Inpatient: claim submitted - discharge.")
    coding_hours = models.FloatField(null=True)
    hold_hours = models.FloatField(null=True)
    payment_lag_hours = models.FloatField(null=True)
    cycle_hours = models.FloatField(null=True, help_text="Procure-to-pay: invoice posted - PO approved.")
    remitted = models.BooleanField(default=False)
    denied_first = models.BooleanField(default=False)
    clean = models.BooleanField(default=False)
    first_pass = models.BooleanField(default=False)
    sla_met = models.PositiveIntegerField(default=0)
    sla_breached = models.PositiveIntegerField(default=0)
    sla_open = models.PositiveIntegerField(default=0)
    sla_open_deadline = models.DateTimeField(null=True)
    refreshed_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["workflow", "anchor_at"], name="fact_anchor"),
            models.Index(fields=["workflow", "facility", "anchor_at"], name="fact_facility"),
            models.Index(fields=["workflow", "payer", "anchor_at"], name="fact_payer"),
            models.Index(fields=["workflow", "patient_class", "anchor_at"], name="fact_class"),
            # Two facets at once (facility and patient class: the commonest filtered view) counted by day.
            models.Index(
                fields=["workflow", "facility", "patient_class", "anchor_at"], name="fact_facility_class"
            ),
            models.Index(fields=["workflow", "invoice_received_at"], name="fact_invoice"),
            models.Index(fields=["business_key"], name="fact_key"),
        ]

    def __str__(self) -> str:
        return f"fact {self.workflow} {self.business_key}"


class DirtyRun(models.Model):
    """A run whose fact is out of date: saved, or given a step, since the rollup last read it."""

    run_id = models.BigIntegerField(primary_key=True)
    marked_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"dirty run {self.run_id}"


class KpiDay(models.Model):
    """One day's tally of a workflow's facts (by anchor day), overall or for one facility, payer or patient class."""

    workflow = models.CharField(max_length=80)
    day = models.DateField()
    dim = models.CharField(max_length=20, blank=True, help_text="'', facility, payer or patient_class.")
    value = models.CharField(max_length=120, blank=True)
    data = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow", "dim", "value", "day"], name="one_kpi_day_per_facet")
        ]

    def __str__(self) -> str:
        return f"{self.workflow} {self.day} {self.dim}={self.value}"
