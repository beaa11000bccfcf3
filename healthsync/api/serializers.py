"""Serializers of the core's resources. PHI (raw bodies, event payloads) is masked for roles without view_phi."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from healthsync.api.base import can_view_phi
from healthsync.audit import record_phi_access
from healthsync.models import (
    CanonicalEvent,
    Connector,
    DataOwnership,
    MappingRule,
    MappingSet,
    MappingVersion,
    Message,
    ReplayRequest,
    SchemaVersion,
    System,
)


class PhiMaskMixin:
    """Fields in `phi_fields` are null, and `phi_masked` true, unless the caller's role may see PHI."""

    phi_fields: tuple[str, ...] = ()

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)  # type: ignore[misc]
        allowed = can_view_phi(self.context["request"])
        if not allowed:
            for name in self.phi_fields:
                if name in data:
                    data[name] = None
        data["phi_masked"] = not allowed
        return data


class SystemSerializer(serializers.ModelSerializer):
    class Meta:
        model = System
        fields = ["id", "code", "name", "kind", "description", "is_active"]


class ConnectorSerializer(serializers.ModelSerializer):
    class Meta:
        model = Connector
        # Secrets live encrypted in their own column and never leave the server.
        fields = [
            "id",
            "system",
            "code",
            "name",
            "direction",
            "protocol",
            "config",
            "lane",
            "is_enabled",
            "retry_max_attempts",
            "retry_backoff_seconds",
            "timeout_seconds",
            "breaker_threshold",
            "consecutive_failures",
            "breaker_open_until",
            "created_at",
            "updated_at",
        ]


class MappingSetSerializer(serializers.ModelSerializer):
    class Meta:
        model = MappingSet
        fields = [
            "id",
            "code",
            "name",
            "protocol",
            "message_type",
            "event_type",
            "description",
            "active_version",
        ]


class MappingRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = MappingRule
        fields = ["id", "position", "target", "source", "transform", "argument", "required", "description"]


class MappingVersionSerializer(serializers.ModelSerializer):
    rules = MappingRuleSerializer(many=True, read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = MappingVersion
        fields = [
            "id",
            "mapping_set",
            "number",
            "status",
            "note",
            "created_by",
            "created_at",
            "approved_by",
            "approved_at",
            "activated_at",
            "rules",
        ]


class SchemaVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = SchemaVersion
        fields = [
            "id",
            "event_type",
            "version",
            "json_schema",
            "status",
            "created_by",
            "created_at",
            "approved_by",
            "approved_at",
        ]


class DataOwnershipSerializer(serializers.ModelSerializer):
    steward = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = DataOwnership
        fields = ["id", "domain", "field", "system", "steward", "note"]


_MESSAGE_FIELDS = [
    "id",
    "connector",
    "received_at",
    "sha256",
    "sender",
    "control_id",
    "message_type",
    "status",
    "lane",
    "business_key",
    "error",
    "attempts",
    "duplicate_of",
    "replay_of",
    "processed_at",
]


class MessageSerializer(serializers.ModelSerializer):
    """A message's envelope and state; never its body (see the detail endpoint)."""

    class Meta:
        model = Message
        fields = _MESSAGE_FIELDS


class MessageDetailSerializer(PhiMaskMixin, serializers.ModelSerializer):
    phi_fields = ("raw",)
    raw = serializers.SerializerMethodField(
        help_text="The body as received; null unless the role may see PHI."
    )
    events = serializers.PrimaryKeyRelatedField(many=True, read_only=True, pk_field=serializers.UUIDField())
    phi_masked = serializers.BooleanField(read_only=True, default=False)

    class Meta:
        model = Message
        fields = [*_MESSAGE_FIELDS, "raw", "events", "phi_masked"]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_raw(self, message: Message) -> str | None:
        if not can_view_phi(self.context["request"]):
            return None
        # Every read of a body is a PHI access and is audited, as in the console.
        record_phi_access(message)
        return message.raw_text


class CanonicalEventSerializer(PhiMaskMixin, serializers.ModelSerializer):
    phi_fields = ("data", "correlation")
    data = serializers.JSONField(
        allow_null=True, help_text="The event's payload; null unless the role may see PHI."
    )
    correlation = serializers.JSONField(allow_null=True)
    phi_masked = serializers.BooleanField(read_only=True, default=False)

    class Meta:
        model = CanonicalEvent
        fields = [
            "id",
            "type",
            "source",
            "subject",
            "occurred_at",
            "recorded_at",
            "facility",
            "idempotency_key",
            "source_ref",
            "correlation",
            "data",
            "message",
            "mapping_version",
            "schema_version",
            "phi_masked",
        ]


class ReplaySerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, help_text="Why the message is replayed (kept for audit).")
    destinations = serializers.PrimaryKeyRelatedField(
        queryset=Connector.objects.all(),
        many=True,
        required=False,
        help_text="Outbound connector ids to resend failed deliveries to; empty or absent: every destination.",
    )


class ReplayRequestSerializer(serializers.ModelSerializer):
    """The audit row of a replay: who, why, how many messages and deliveries."""

    replays = serializers.SerializerMethodField(help_text="Ids of the new messages the replay stored.")

    class Meta:
        model = ReplayRequest
        fields = [
            "id",
            "kind",
            "reason",
            "actor_username",
            "created_at",
            "message_count",
            "deliveries_resent",
            "deliveries_unchanged",
            "criteria",
            "replays",
        ]

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_replays(self, request: ReplayRequest) -> list[int]:
        return [item.replay_id for item in request.items.all() if item.replay_id is not None]
