"""Serializers of workflow runs and exception items; patient identity and run context are PHI."""

from __future__ import annotations

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from healthsync.api.base import can_view_phi
from healthsync.api.serializers import PhiMaskMixin
from healthsync.audit import record_phi_access
from healthsync.models import ExceptionComment, ExceptionItem
from workflows.models import WorkflowRun, WorkflowStep


class WorkflowStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorkflowStep
        fields = ["step", "occurred_at", "recorded_at", "event", "delivery", "note"]


class WorkflowRunSerializer(PhiMaskMixin, serializers.ModelSerializer):
    phi_fields = ("context",)
    context = serializers.JSONField(
        allow_null=True, help_text="Account data; null unless the role may see PHI."
    )
    steps = WorkflowStepSerializer(many=True, read_only=True)
    phi_masked = serializers.BooleanField(read_only=True, default=False)

    class Meta:
        model = WorkflowRun
        fields = [
            "id",
            "workflow",
            "business_key",
            "status",
            "step",
            "context",
            "facility",
            "patient_class",
            "payer",
            "amount",
            "started_at",
            "updated_at",
            "completed_at",
            "steps",
            "phi_masked",
        ]


class ExceptionCommentSerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ExceptionComment
        fields = ["id", "author", "body", "created_at"]


_EXCEPTION_FIELDS = [
    "id",
    "kind",
    "status",
    "reason",
    "detail",
    "workflow",
    "business_key",
    "facility",
    "payer",
    "amount",
    "message",
    "event",
    "delivery",
    "assignee",
    "sla_due_at",
    "created_at",
    "updated_at",
    "resolved_at",
    "resolved_by",
    "resolution_note",
]


class ExceptionItemSerializer(serializers.ModelSerializer):
    assignee = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    resolved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = ExceptionItem
        fields = _EXCEPTION_FIELDS


class PatientSerializer(serializers.Serializer):
    name = serializers.CharField(allow_blank=True)
    mrn = serializers.CharField(allow_blank=True)


class ExceptionDetailSerializer(ExceptionItemSerializer):
    comments = ExceptionCommentSerializer(many=True, read_only=True)
    patient = serializers.SerializerMethodField(help_text="Name and MRN; null unless the role may see PHI.")
    phi_masked = serializers.SerializerMethodField()

    class Meta:
        model = ExceptionItem
        fields = [*_EXCEPTION_FIELDS, "comments", "patient", "phi_masked"]

    @extend_schema_field(PatientSerializer(allow_null=True))
    def get_patient(self, exception: ExceptionItem) -> dict[str, str] | None:
        if not can_view_phi(self.context["request"]):
            return None
        from workflows.views import _run_for, patient_identity

        identity = patient_identity(exception, _run_for(exception))
        if identity:
            record_phi_access(exception)
        return {"name": identity.name or "", "mrn": identity.mrn or ""}

    def get_phi_masked(self, exception: ExceptionItem) -> bool:
        return not can_view_phi(self.context["request"])


class AssignSerializer(serializers.Serializer):
    assignee = serializers.PrimaryKeyRelatedField(
        queryset=User.objects.filter(is_active=True),
        allow_null=True,
        help_text="User id; null puts the exception back in the queue.",
    )


class NoteSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=5000, help_text="How the exception was resolved.")


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=5000, help_text="Why the exception is ignored.")


class CommentSerializer(serializers.Serializer):
    body = serializers.CharField(max_length=5000)


class RetrySerializer(serializers.Serializer):
    fixes = serializers.DictField(
        child=serializers.CharField(max_length=500, allow_blank=True),
        required=False,
        help_text="Corrected values, keyed by the names in detail.fix_fields.",
    )
