"""Change requests over the API: propose, submit, approve, reject, send back. Every rule is the governance
services' own (healthsync.governance.services); this module only translates HTTP to them and back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from healthsync.api.base import IdFilter
from healthsync.api.views import ReadOnlyApiViewSet
from healthsync.choices import ChangeKind, ChangeStatus
from healthsync.governance import services
from healthsync.governance.kinds import ProposalInvalid
from healthsync.models import ChangeRequest, ChangeReview

# Reviewers are the board and the data stewards concerned: the service decides, per request.
REVIEW = ["healthsync.view_changerequest"]


class ChangeReviewSerializer(serializers.ModelSerializer):
    reviewer = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ChangeReview
        fields = [
            "decision",
            "reviewer",
            "comment",
            "as_board",
            "stewarded_domains",
            "superseded",
            "created_at",
        ]


class ChangeRequestSerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="username", read_only=True)
    reviews = ChangeReviewSerializer(many=True, read_only=True)

    class Meta:
        model = ChangeRequest
        fields = [
            "id",
            "kind",
            "target_key",
            "title",
            "reason",
            "status",
            "before",
            "after",
            "author",
            "created_at",
            "submitted_at",
            "decided_at",
            "deployed_at",
            "suite_result",
            "findings",
            "domains",
            "reviews",
        ]


class ProposalSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ChangeKind.choices)
    after = serializers.DictField(
        help_text="The proposed state, in the shape the configuration export writes."
    )
    title = serializers.CharField(max_length=200)
    reason = serializers.CharField(max_length=5000)


class ReviewCommentSerializer(serializers.Serializer):
    comment = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")


class ChangeRequestFilter(filters.FilterSet):
    kind = filters.ChoiceFilter(choices=ChangeKind.choices)
    status = filters.ChoiceFilter(choices=ChangeStatus.choices)
    author = IdFilter(field_name="author_id")
    target_key = filters.CharFilter(max_length=200)

    class Meta:
        model = ChangeRequest
        fields = ["kind", "status", "author", "target_key"]


@contextlib.contextmanager
def _as_problem() -> Iterator[None]:
    """The governance services' refusals become 400 problems with their own words."""
    try:
        yield
    except ProposalInvalid as exc:
        raise exceptions.ValidationError({"after": exc.errors}) from exc
    except services.GovernanceError as exc:
        raise exceptions.ValidationError(exc.message) from exc


class ChangeRequestViewSet(mixins.CreateModelMixin, ReadOnlyApiViewSet):
    """Governed configuration changes and their four-eyes review."""

    scope = "changes"
    queryset = (
        ChangeRequest.objects.select_related("author").prefetch_related("reviews__reviewer").order_by("-id")
    )
    serializer_class = ChangeRequestSerializer
    filterset_class = ChangeRequestFilter
    action_permissions = {
        "submit": ["healthsync.add_changerequest"],
        "approve": REVIEW,
        "reject": REVIEW,
        "request_changes": REVIEW,
    }

    def _answer(self, change_request: ChangeRequest, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=change_request.pk)
        return Response(ChangeRequestSerializer(fresh).data, status=code)

    def _comment(self, request: Request) -> str:
        data = ReviewCommentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return data.validated_data["comment"]

    @extend_schema(request=ProposalSerializer, responses={201: ChangeRequestSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Propose a change (a draft); submit it to send it to the board."""
        data = ProposalSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        with _as_problem():
            change_request = services.change_request_create(**data.validated_data, actor=request.user)
        return self._answer(change_request, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ChangeRequestSerializer)
    @action(detail=True, methods=["post"])
    def submit(self, request: Request, pk: str | None = None) -> Response:
        """Send a draft to review: runs the sample suite and the ownership and schema checks."""
        with _as_problem():
            change_request = services.change_request_submit(
                change_request=self.get_object(), actor=request.user
            )
        return self._answer(change_request)

    @extend_schema(request=ReviewCommentSerializer, responses=ChangeRequestSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        with _as_problem():
            change_request = services.change_request_approve(
                change_request=self.get_object(), comment=self._comment(request), actor=request.user
            )
        return self._answer(change_request)

    @extend_schema(request=ReviewCommentSerializer, responses=ChangeRequestSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        with _as_problem():
            change_request = services.change_request_reject(
                change_request=self.get_object(), comment=self._comment(request), actor=request.user
            )
        return self._answer(change_request)

    @extend_schema(request=ReviewCommentSerializer, responses=ChangeRequestSerializer)
    @action(detail=True, methods=["post"], url_path="request-changes")
    def request_changes(self, request: Request, pk: str | None = None) -> Response:
        with _as_problem():
            change_request = services.change_request_request_changes(
                change_request=self.get_object(), comment=self._comment(request), actor=request.user
            )
        return self._answer(change_request)
