"""The KPI tiles as JSON, from the same selector the dashboard uses."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dashboards.selectors import kpis
from healthsync.api.base import ApiViewMixin


class DurationStatsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    median_hours = serializers.FloatField(allow_null=True)
    p90_hours = serializers.FloatField(allow_null=True)
    median_days = serializers.FloatField(allow_null=True)
    p90_days = serializers.FloatField(allow_null=True)


class ExceptionKindSerializer(serializers.Serializer):
    kind = serializers.CharField()
    label = serializers.CharField()
    count = serializers.IntegerField()
    amount = serializers.DecimalField(max_digits=16, decimal_places=2)


class KpisSerializer(serializers.Serializer):
    since = serializers.DateTimeField(help_text="Start of the window (the last 90 days).")
    discharge_to_bill = DurationStatsSerializer()
    claim_lag = DurationStatsSerializer(help_text="Inpatient: claim submitted minus discharge.")
    runs_discharged = serializers.IntegerField()
    runs_billed = serializers.IntegerField()
    runs_blocked = serializers.IntegerField()
    dnfb_amount = serializers.DecimalField(max_digits=16, decimal_places=2)
    open_exceptions = ExceptionKindSerializer(many=True)
    open_exception_count = serializers.IntegerField()
    money_at_risk = serializers.DecimalField(max_digits=16, decimal_places=2)


class KpiView(ApiViewMixin, APIView):
    """Discharge-to-bill, claim lag, DNFB and the open exception backlog over the last 90 days."""

    scope = "kpis"
    required_permissions = ["workflows.view_kpis"]

    @extend_schema(responses=KpisSerializer, operation_id="kpis_retrieve")
    def get(self, request: Request) -> Response:
        return Response(KpisSerializer(kpis()).data)
