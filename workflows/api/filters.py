"""Query filters of workflow runs and exceptions."""

from __future__ import annotations

from django.db.models import QuerySet
from django_filters import rest_framework as filters

from healthsync.api.base import DateTimeFilter, IdFilter
from healthsync.choices import OPEN_EXCEPTION_STATUSES, ExceptionKind, ExceptionStatus, RunStatus
from healthsync.models import ExceptionItem
from workflows.models import WorkflowRun


class WorkflowRunFilter(filters.FilterSet):
    workflow = filters.CharFilter(max_length=80)
    status = filters.ChoiceFilter(choices=RunStatus.choices)
    business_key = filters.CharFilter(max_length=200)
    facility = filters.CharFilter(max_length=80)
    payer = filters.CharFilter(max_length=120)
    patient_class = filters.CharFilter(max_length=10)
    started_after = DateTimeFilter(field_name="started_at", lookup_expr="gte")
    started_before = DateTimeFilter(field_name="started_at", lookup_expr="lt")

    class Meta:
        model = WorkflowRun
        fields = ["workflow", "status", "business_key", "facility", "payer", "patient_class"]


class ExceptionItemFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=ExceptionStatus.choices)
    kind = filters.ChoiceFilter(choices=ExceptionKind.choices)
    is_open = filters.BooleanFilter(method="filter_open", help_text="true: open, in progress or waiting.")
    workflow = filters.CharFilter(max_length=80)
    assignee = IdFilter(field_name="assignee_id")
    unassigned = filters.BooleanFilter(field_name="assignee", lookup_expr="isnull")
    business_key = filters.CharFilter(max_length=200)
    facility = filters.CharFilter(max_length=80)
    payer = filters.CharFilter(max_length=120)
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = DateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = ExceptionItem
        fields = ["status", "kind", "workflow", "business_key", "facility", "payer"]

    def filter_open(self, queryset: QuerySet, name: str, value: bool | None) -> QuerySet:
        if value is None:
            return queryset
        if value:
            return queryset.filter(status__in=OPEN_EXCEPTION_STATUSES)
        return queryset.exclude(status__in=OPEN_EXCEPTION_STATUSES)
