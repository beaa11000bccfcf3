"""Viewsets of the core's resources. Configuration is read-only here: it changes through change requests."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.filters import OrderingFilter
from rest_framework.request import Request
from rest_framework.response import Response

from healthsync.api import filters, serializers
from healthsync.api.base import ApiViewMixin
from healthsync.models import (
    CanonicalEvent,
    Connector,
    DataOwnership,
    MappingRule,
    MappingSet,
    MappingVersion,
    Message,
    SchemaVersion,
    System,
)
from healthsync.replay import message_replay


class ReadOnlyApiViewSet(ApiViewMixin, viewsets.ReadOnlyModelViewSet):
    """A read-only resource; `scope` names the API client scope it needs (<scope>:read)."""

    scope = ""


class SystemViewSet(ReadOnlyApiViewSet):
    """Enterprise systems (EHR, RCM, ERP) HealthSync keeps in step."""

    scope = "systems"
    queryset = System.objects.order_by("id")
    serializer_class = serializers.SystemSerializer
    filterset_class = filters.SystemFilter


class ConnectorViewSet(ReadOnlyApiViewSet):
    """Configured connectors, with their delivery policy and circuit-breaker state."""

    scope = "systems"
    queryset = Connector.objects.order_by("id")
    serializer_class = serializers.ConnectorSerializer
    filterset_class = filters.ConnectorFilter


class MappingSetViewSet(ReadOnlyApiViewSet):
    scope = "mappings"
    queryset = MappingSet.objects.order_by("id")
    serializer_class = serializers.MappingSetSerializer
    filterset_class = filters.MappingSetFilter


class MappingVersionViewSet(ReadOnlyApiViewSet):
    """Mapping versions with their rules; only the approved, active version of a set runs."""

    scope = "mappings"
    queryset = (
        MappingVersion.objects.select_related("created_by", "approved_by")
        .prefetch_related(Prefetch("rules", queryset=MappingRule.objects.order_by("position", "id")))
        .order_by("id")
    )
    serializer_class = serializers.MappingVersionSerializer
    filterset_class = filters.MappingVersionFilter


class SchemaVersionViewSet(ReadOnlyApiViewSet):
    scope = "schemas"
    queryset = SchemaVersion.objects.select_related("created_by", "approved_by").order_by("id")
    serializer_class = serializers.SchemaVersionSerializer
    filterset_class = filters.SchemaVersionFilter


class DataOwnershipViewSet(ReadOnlyApiViewSet):
    """Which system is the system of record for each data domain, and its steward."""

    scope = "ownership"
    queryset = DataOwnership.objects.select_related("steward").order_by("id")
    serializer_class = serializers.DataOwnershipSerializer
    filterset_class = filters.DataOwnershipFilter


class MessageViewSet(ReadOnlyApiViewSet):
    """The message store: search envelopes; the detail carries the body for roles that may see PHI."""

    scope = "messages"
    action_permissions = {"replay": ["healthsync.view_message", "healthsync.replay_message"]}
    filterset_class = filters.MessageFilter
    filter_backends = [*ReadOnlyApiViewSet.filter_backends, OrderingFilter]
    ordering_fields = ["id", "received_at"]
    ordering = ["-id"]

    def get_queryset(self) -> QuerySet[Message]:
        if self.action == "list":
            # Bodies can be large; a search never needs them.
            return Message.objects.defer("raw")
        return Message.objects.prefetch_related("events")

    def get_serializer_class(self) -> Any:
        if self.action == "list":
            return serializers.MessageSerializer
        return serializers.MessageDetailSerializer

    @extend_schema(request=serializers.ReplaySerializer, responses={201: serializers.ReplayRequestSerializer})
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str | None = None) -> Response:
        """Run the message through the pipeline again; downstream effects stay exactly once."""
        message = self.get_object()
        data = serializers.ReplaySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        replay = message_replay(
            messages=[message],
            destinations=data.validated_data.get("destinations") or None,
            reason=data.validated_data["reason"],
            actor=request.user,
        )
        return Response(serializers.ReplayRequestSerializer(replay).data, status=status.HTTP_201_CREATED)


class CanonicalEventViewSet(ReadOnlyApiViewSet):
    """Canonical events with their lineage (source message, mapping and schema version)."""

    scope = "events"
    queryset = CanonicalEvent.objects.order_by("-recorded_at", "id")
    serializer_class = serializers.CanonicalEventSerializer
    filterset_class = filters.CanonicalEventFilter
