"""Workflow runs (read) and the exception queue (read, assign, comment, resolve, ignore, retry).

Every write calls the same service as the console (healthsync.services); the services check the role again.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.filters import OrderingFilter
from rest_framework.request import Request
from rest_framework.response import Response

from healthsync import services
from healthsync.api.views import ReadOnlyApiViewSet
from healthsync.models import ExceptionComment, ExceptionItem
from workflows.api import filters, serializers
from workflows.models import WorkflowRun, WorkflowStep

WORK = ["healthsync.view_exceptionitem", "healthsync.work_exceptionitem"]


class WorkflowRunViewSet(ReadOnlyApiViewSet):
    """One business key's way through a workflow, with the steps it reached."""

    scope = "workflows"
    queryset = WorkflowRun.objects.prefetch_related(
        Prefetch("steps", queryset=WorkflowStep.objects.order_by("occurred_at", "id"))
    ).order_by("-started_at", "id")
    serializer_class = serializers.WorkflowRunSerializer
    filterset_class = filters.WorkflowRunFilter
    filter_backends = [*ReadOnlyApiViewSet.filter_backends, OrderingFilter]
    ordering_fields = ["started_at", "updated_at", "amount"]


class ExceptionItemViewSet(ReadOnlyApiViewSet):
    """The exception queue: why work stopped, and the recovery actions revenue-cycle staff take."""

    scope = "exceptions"
    filterset_class = filters.ExceptionItemFilter
    filter_backends = [*ReadOnlyApiViewSet.filter_backends, OrderingFilter]
    ordering_fields = ["created_at", "amount", "sla_due_at"]
    ordering = ["-created_at", "id"]
    action_permissions = {name: WORK for name in ("assign", "comment", "resolve", "ignore", "retry")}

    def get_queryset(self) -> QuerySet[ExceptionItem]:
        items = ExceptionItem.objects.select_related("assignee", "resolved_by")
        if self.action != "list":
            items = items.select_related("message__connector").prefetch_related(
                Prefetch("comments", queryset=ExceptionComment.objects.select_related("author"))
            )
        return items

    def get_serializer_class(self) -> Any:
        if self.action == "list":
            return serializers.ExceptionItemSerializer
        return serializers.ExceptionDetailSerializer

    def _answer(self, exception: ExceptionItem, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=exception.pk)
        return Response(
            serializers.ExceptionDetailSerializer(fresh, context=self.get_serializer_context()).data,
            status=code,
        )

    def _input(self, serializer_class: type, request: Request) -> dict[str, Any]:
        serializer = serializer_class(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    @extend_schema(request=serializers.AssignSerializer, responses=serializers.ExceptionDetailSerializer)
    @action(detail=True, methods=["post"])
    def assign(self, request: Request, pk: str | None = None) -> Response:
        """Give the exception to someone, or back to the queue (assignee null)."""
        data = self._input(serializers.AssignSerializer, request)
        exception = services.exception_assign(
            exception=self.get_object(), assignee=data["assignee"], actor=request.user
        )
        return self._answer(exception)

    @extend_schema(
        request=serializers.CommentSerializer, responses={201: serializers.ExceptionCommentSerializer}
    )
    @action(detail=True, methods=["post"])
    def comment(self, request: Request, pk: str | None = None) -> Response:
        data = self._input(serializers.CommentSerializer, request)
        comment = services.exception_comment(
            exception=self.get_object(), body=data["body"], actor=request.user
        )
        return Response(serializers.ExceptionCommentSerializer(comment).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=serializers.NoteSerializer, responses=serializers.ExceptionDetailSerializer)
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, pk: str | None = None) -> Response:
        """Close the exception as dealt with, saying how."""
        data = self._input(serializers.NoteSerializer, request)
        exception = services.exception_resolve(
            exception=self.get_object(), note=data["note"], actor=request.user
        )
        return self._answer(exception)

    @extend_schema(request=serializers.ReasonSerializer, responses=serializers.ExceptionDetailSerializer)
    @action(detail=True, methods=["post"])
    def ignore(self, request: Request, pk: str | None = None) -> Response:
        """Close the exception without action (a test patient, a duplicate), saying why."""
        data = self._input(serializers.ReasonSerializer, request)
        exception = services.exception_ignore(
            exception=self.get_object(), reason=data["reason"], actor=request.user
        )
        return self._answer(exception)

    @extend_schema(request=serializers.RetrySerializer, responses=serializers.ExceptionDetailSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Apply the fixes and run the recovery again; never a second claim or journal entry."""
        data = self._input(serializers.RetrySerializer, request)
        exception = services.exception_retry(
            exception=self.get_object(), fixes=data.get("fixes") or {}, actor=request.user
        )
        return self._answer(exception)
