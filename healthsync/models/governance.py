"""Governance: change requests and their reviews, sample suites for mappings, ownership exceptions."""

from __future__ import annotations

from auditlog.registry import auditlog
from django.conf import settings
from django.db import models
from django.utils import timezone

from healthsync.choices import ChangeKind, ChangeStatus, ReviewDecision

OPEN_CHANGE_STATUSES = (ChangeStatus.DRAFT, ChangeStatus.SUBMITTED, ChangeStatus.CHANGES_REQUESTED)
PENDING_REVIEW_STATUSES = (ChangeStatus.SUBMITTED,)


class ChangeRequest(models.Model):
    """A proposed change to one governed object: the state before, the state after, and its review trail."""

    kind = models.CharField(max_length=24, choices=ChangeKind.choices)
    # The governed object's natural key (a code, an event type, domain/field): stable across databases.
    target_key = models.CharField(max_length=200)
    title = models.CharField(max_length=200)
    reason = models.TextField(help_text="Why the change is needed, for the board.")
    status = models.CharField(max_length=20, choices=ChangeStatus.choices, default=ChangeStatus.DRAFT)
    # Serialised states, in the same shape export_config writes: `before` is None for a new object.
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField()
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    submitted_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    deployed_at = models.DateTimeField(null=True, blank=True)
    deployed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    rollback_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="rollbacks"
    )
    # Sample-suite outcome at the last submission: {"passed": bool, "cases": [...]}; None when not applicable.
    suite_result = models.JSONField(null=True, blank=True)
    # Review findings computed at submission (ownership violations, breaking schema changes).
    findings = models.JSONField(default=list, blank=True)
    domains = models.JSONField(default=list, blank=True, help_text="Data domains the change touches.")

    class Meta:
        ordering = ["-id"]
        permissions = [
            ("approve_changerequest", "Can approve, reject or send back change requests"),
            ("deploy_changerequest", "Can deploy approved change requests"),
        ]

    def __str__(self) -> str:
        return f"CR-{self.pk} {self.get_kind_display()} {self.target_key}"

    @property
    def suite_passed(self) -> bool | None:
        if not self.suite_result:
            return None
        return bool(self.suite_result.get("passed"))


class ChangeReview(models.Model):
    """One reviewer's decision on a change request, with the comment they left."""

    change_request = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=20, choices=ReviewDecision.choices)
    comment = models.TextField(blank=True)
    as_board = models.BooleanField(default=False)
    stewarded_domains = models.JSONField(default=list, blank=True)
    # Reviews from an earlier submission stay visible but no longer count towards approval.
    superseded = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} by {self.reviewer} on CR-{self.change_request_id}"


class SampleCase(models.Model):
    """A sample source message for a mapping set and the canonical data it must produce."""

    mapping_set = models.ForeignKey("healthsync.MappingSet", on_delete=models.CASCADE, related_name="samples")
    name = models.CharField(max_length=120)
    message = models.TextField(help_text="The raw source message (synthetic: never real patient data).")
    expected = models.JSONField(default=dict, help_text="The event data the mapping must produce.")
    # A case may instead expect the mapping to refuse the message, naming the missing fields.
    expect_error = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["mapping_set", "name"]
        constraints = [models.UniqueConstraint(fields=["mapping_set", "name"], name="sample_case_name")]

    def __str__(self) -> str:
        return f"{self.mapping_set.code}: {self.name}"


class OwnershipException(models.Model):
    """An approved permission for a system to write a domain (or field) that another system owns."""

    system = models.ForeignKey("healthsync.System", on_delete=models.PROTECT, related_name="+")
    domain = models.CharField(max_length=80)
    field = models.CharField(max_length=120, blank=True, help_text="Blank: the whole domain.")
    reason = models.TextField()
    is_active = models.BooleanField(default=True)
    change_request = models.ForeignKey(
        ChangeRequest, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["domain", "field", "system"]
        constraints = [
            models.UniqueConstraint(fields=["system", "domain", "field"], name="one_ownership_exception")
        ]

    def __str__(self) -> str:
        return f"{self.system} may write {self.domain}{'.' + self.field if self.field else ''}"


class WorkflowSla(models.Model):
    """The deployed SLA of one workflow step; a step without a row keeps the SLA declared in code.

    Written only by deploying a change request (kind workflow_sla); the SLA check and the dashboards read it
    through healthsync.governance.runtime.step_slas().
    """

    workflow = models.CharField(max_length=80)
    step = models.CharField(max_length=80)
    sla_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="Blank: no limit.")
    change_request = models.ForeignKey(
        ChangeRequest, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["workflow", "step"]
        constraints = [models.UniqueConstraint(fields=["workflow", "step"], name="one_sla_per_workflow_step")]

    def __str__(self) -> str:
        return f"{self.workflow}.{self.step}: {self.sla_seconds}s"


class CodeTable(models.Model):
    """A governed code table: source codes and the canonical values mapping rules look them up as."""

    code = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    entries = models.JSONField(default=dict, help_text="Source code → canonical value.")
    change_request = models.ForeignKey(
        ChangeRequest, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


auditlog.register(ChangeRequest)
auditlog.register(ChangeReview)
auditlog.register(SampleCase)
auditlog.register(OwnershipException)
auditlog.register(WorkflowSla)
auditlog.register(CodeTable)
