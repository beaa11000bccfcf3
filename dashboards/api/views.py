"""The KPI tiles as JSON, from the same selector and the same filters the dashboard uses."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dashboards.definitions import DEFINITIONS
from dashboards.forms import PATIENT_CLASSES, DashboardFilterForm
from dashboards.selectors import MAX_RANGE_DAYS, WINDOW_DAYS, close_readiness, kpis
from healthsync.api.base import ApiViewMixin

MONEY = {"max_digits": 16, "decimal_places": 2}


def _help(key: str) -> str:
    return DEFINITIONS[key].text


class KpiQuerySerializer(serializers.Serializer):
    """The dashboard's filters; dates are whole local days, the end date included."""

    facility = serializers.CharField(required=False, allow_blank=True, max_length=80)
    payer = serializers.CharField(required=False, allow_blank=True, max_length=120)
    patient_class = serializers.ChoiceField(required=False, allow_blank=True, choices=PATIENT_CLASSES)
    start = serializers.DateField(
        required=False, help_text=f"First day of the window (default: {WINDOW_DAYS} days before the end)."
    )
    end = serializers.DateField(
        required=False, help_text=f"Last day of the window (default: now); at most {MAX_RANGE_DAYS} days."
    )


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
    amount = serializers.DecimalField(**MONEY)


class AgeBandSerializer(serializers.Serializer):
    band = serializers.CharField()
    count = serializers.IntegerField()
    amount = serializers.DecimalField(**MONEY)


class SlaSerializer(serializers.Serializer):
    workflow = serializers.CharField()
    label = serializers.CharField()
    met = serializers.IntegerField()
    breached = serializers.IntegerField()
    pending = serializers.IntegerField()
    compliance = serializers.FloatField(allow_null=True)


class PeriodSerializer(serializers.Serializer):
    period = serializers.CharField(help_text="YYYY-MM")
    ready = serializers.BooleanField()
    dnfb_count = serializers.IntegerField()
    dnfb_amount = serializers.DecimalField(**MONEY)
    unposted_remits = serializers.IntegerField()
    unmatched_invoices = serializers.IntegerField()
    labour_posted = serializers.BooleanField()
    open_exceptions = serializers.IntegerField()


class KpisSerializer(serializers.Serializer):
    since = serializers.DateTimeField(help_text="Start of the window (inclusive).")
    until = serializers.DateTimeField(help_text="End of the window (exclusive).")
    discharge_to_bill = DurationStatsSerializer(help_text=_help("discharge_to_bill"))
    claim_lag = DurationStatsSerializer(help_text=_help("claim_lag"))
    coding_lag = DurationStatsSerializer(help_text=_help("coding_lag"))
    bill_hold = DurationStatsSerializer(help_text=_help("bill_hold"))
    payment_lag = DurationStatsSerializer(help_text=_help("payment_lag"))
    po_cycle = DurationStatsSerializer(help_text=_help("po_cycle"))
    runs_discharged = serializers.IntegerField(help_text=_help("runs_discharged"))
    runs_billed = serializers.IntegerField(help_text=_help("runs_billed"))
    runs_blocked = serializers.IntegerField(help_text=_help("runs_blocked"))
    dnfb_amount = serializers.DecimalField(help_text=_help("dnfb"), **MONEY)
    adgpsr = serializers.DecimalField(help_text="Average daily gross patient service revenue.", **MONEY)
    dnfb_days = serializers.DecimalField(allow_null=True, help_text=_help("dnfb_days"), **MONEY)
    gross_charges = serializers.DecimalField(**MONEY)
    late_charges = serializers.DecimalField(**MONEY)
    late_charge_rate = serializers.FloatField(allow_null=True, help_text=_help("late_charges"))
    claims_submitted = serializers.IntegerField()
    claims_clean = serializers.IntegerField()
    clean_claim_rate = serializers.FloatField(allow_null=True, help_text=_help("clean_claims"))
    claims_first_pass = serializers.IntegerField()
    first_pass_yield = serializers.FloatField(allow_null=True, help_text=_help("first_pass"))
    claims_remitted = serializers.IntegerField()
    claims_denied = serializers.IntegerField()
    denial_rate = serializers.FloatField(allow_null=True, help_text=_help("denials"))
    open_exceptions = ExceptionKindSerializer(many=True)
    open_exception_count = serializers.IntegerField()
    money_at_risk = serializers.DecimalField(**MONEY)
    backlog = AgeBandSerializer(many=True, help_text=_help("exceptions"))
    sla = SlaSerializer(many=True, help_text=_help("sla"))
    close_readiness = PeriodSerializer(many=True, help_text=_help("close"))


class KpiView(ApiViewMixin, APIView):
    """Every dashboard KPI for the window and facets asked for (default: the last 90 days, everything)."""

    scope = "kpis"
    required_permissions = ["workflows.view_kpis"]

    @extend_schema(
        parameters=[KpiQuerySerializer],
        responses={200: KpisSerializer, 400: OpenApiResponse(description="Bad filters (problem detail).")},
        operation_id="kpis_retrieve",
    )
    def get(self, request: Request) -> Response:
        KpiQuerySerializer(data=request.query_params).is_valid(raise_exception=True)
        form = DashboardFilterForm(request.query_params)
        if not form.is_valid():
            raise ValidationError({field: list(errors) for field, errors in form.errors.items()})
        filters = form.to_filters(timezone.now())
        figures = kpis(filters=filters)
        data: dict[str, Any] = {
            name: getattr(figures, name)
            for name in KpisSerializer().fields
            if name not in ("close_readiness",)
        }
        data["close_readiness"] = close_readiness(filters)
        return Response(KpisSerializer(data).data)
