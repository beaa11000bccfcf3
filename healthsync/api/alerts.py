"""/api/v1/ops-alerts/: operations alerts (raised, acknowledged, cleared) for monitoring scripts to poll."""

from __future__ import annotations

from django_filters import rest_framework as filters
from rest_framework import serializers

from healthsync.api.base import DateTimeFilter, IdFilter
from healthsync.api.views import ReadOnlyApiViewSet
from healthsync.choices import AlertKind, AlertState
from healthsync.models import ConnectorAlert


class ConnectorAlertSerializer(serializers.ModelSerializer):
    connector_code = serializers.CharField(source="connector.code", read_only=True)

    class Meta:
        model = ConnectorAlert
        fields = [
            "id",
            "connector",
            "connector_code",
            "kind",
            "state",
            "message",
            "value",
            "threshold",
            "raised_at",
            "last_seen_at",
            "acknowledged_at",
            "acknowledged_by",
            "cleared_at",
        ]


class ConnectorAlertFilter(filters.FilterSet):
    connector = IdFilter(field_name="connector_id")
    kind = filters.ChoiceFilter(choices=AlertKind.choices)
    state = filters.ChoiceFilter(choices=AlertState.choices)
    raised_after = DateTimeFilter(field_name="raised_at", lookup_expr="gte")

    class Meta:
        model = ConnectorAlert
        fields = ["connector", "kind", "state", "raised_after"]


class ConnectorAlertViewSet(ReadOnlyApiViewSet):
    """Operations alerts on connectors: quiet in expected hours, queue above threshold or growing."""

    scope = "systems"
    queryset = ConnectorAlert.objects.select_related("connector").order_by("-raised_at", "-id")
    serializer_class = ConnectorAlertSerializer
    filterset_class = ConnectorAlertFilter
