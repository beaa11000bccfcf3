"""Query filters of the core's resources (django-filter); bad values answer 400 with the field's error."""

from __future__ import annotations

from django_filters import rest_framework as filters

from healthsync.api.base import DateTimeFilter, IdFilter
from healthsync.choices import Direction, Lane, MessageStatus, Protocol, SystemKind, VersionStatus
from healthsync.models import (
    CanonicalEvent,
    Connector,
    DataOwnership,
    MappingSet,
    MappingVersion,
    Message,
    SchemaVersion,
    System,
)


class SystemFilter(filters.FilterSet):
    kind = filters.ChoiceFilter(choices=SystemKind.choices)
    is_active = filters.BooleanFilter()

    class Meta:
        model = System
        fields = ["kind", "is_active"]


class ConnectorFilter(filters.FilterSet):
    system = IdFilter(field_name="system_id")
    protocol = filters.ChoiceFilter(choices=Protocol.choices)
    direction = filters.ChoiceFilter(choices=Direction.choices)
    lane = filters.ChoiceFilter(choices=Lane.choices)
    is_enabled = filters.BooleanFilter()

    class Meta:
        model = Connector
        fields = ["system", "protocol", "direction", "lane", "is_enabled"]


class MappingSetFilter(filters.FilterSet):
    protocol = filters.ChoiceFilter(choices=Protocol.choices)
    message_type = filters.CharFilter(max_length=40)
    event_type = filters.CharFilter(max_length=80)

    class Meta:
        model = MappingSet
        fields = ["protocol", "message_type", "event_type"]


class MappingVersionFilter(filters.FilterSet):
    mapping_set = IdFilter(field_name="mapping_set_id")
    status = filters.ChoiceFilter(choices=VersionStatus.choices)

    class Meta:
        model = MappingVersion
        fields = ["mapping_set", "status"]


class SchemaVersionFilter(filters.FilterSet):
    event_type = filters.CharFilter(max_length=80)
    status = filters.ChoiceFilter(choices=VersionStatus.choices)

    class Meta:
        model = SchemaVersion
        fields = ["event_type", "status"]


class DataOwnershipFilter(filters.FilterSet):
    domain = filters.CharFilter(max_length=80)
    system = IdFilter(field_name="system_id")

    class Meta:
        model = DataOwnership
        fields = ["domain", "system"]


class MessageFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=MessageStatus.choices)
    lane = filters.ChoiceFilter(choices=Lane.choices)
    connector = IdFilter(field_name="connector_id")
    message_type = filters.CharFilter(lookup_expr="icontains", max_length=40, help_text="Contains, e.g. A03.")
    control_id = filters.CharFilter(max_length=200)
    sender = filters.CharFilter(max_length=200)
    business_key = filters.CharFilter(max_length=200)
    received_after = DateTimeFilter(field_name="received_at", lookup_expr="gte")
    received_before = DateTimeFilter(field_name="received_at", lookup_expr="lt")

    class Meta:
        model = Message
        fields = [
            "status",
            "lane",
            "connector",
            "message_type",
            "control_id",
            "sender",
            "business_key",
            "received_after",
            "received_before",
        ]


class CanonicalEventFilter(filters.FilterSet):
    type = filters.CharFilter(max_length=80)
    subject = filters.CharFilter(max_length=200)
    facility = filters.CharFilter(max_length=80)
    message = IdFilter(field_name="message_id")
    recorded_after = DateTimeFilter(field_name="recorded_at", lookup_expr="gte")
    recorded_before = DateTimeFilter(field_name="recorded_at", lookup_expr="lt")

    class Meta:
        model = CanonicalEvent
        fields = ["type", "subject", "facility", "message", "recorded_after", "recorded_before"]
