"""/api/: the versioned API, its OpenAPI schema and its docs (served locally by drf-spectacular-sidecar).

Like the root URLconf, this module wires the apps' API views in; the core's own modules never import them.
"""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from dashboards.api.views import KpiView
from healthsync.api import views
from healthsync.api.alerts import ConnectorAlertViewSet
from healthsync.api.changes import ChangeRequestViewSet
from healthsync.api.problems import problem_not_found
from workflows.api.views import ExceptionItemViewSet, WorkflowRunViewSet

router = SimpleRouter()
router.register("systems", views.SystemViewSet, basename="system")
router.register("connectors", views.ConnectorViewSet, basename="connector")
router.register("mapping-sets", views.MappingSetViewSet, basename="mappingset")
router.register("mapping-versions", views.MappingVersionViewSet, basename="mappingversion")
router.register("schema-versions", views.SchemaVersionViewSet, basename="schemaversion")
router.register("data-ownership", views.DataOwnershipViewSet, basename="dataownership")
router.register("messages", views.MessageViewSet, basename="message")
router.register("events", views.CanonicalEventViewSet, basename="event")
router.register("workflow-runs", WorkflowRunViewSet, basename="workflowrun")
router.register("exceptions", ExceptionItemViewSet, basename="exception")
router.register("change-requests", ChangeRequestViewSet, basename="changerequest")
router.register("ops-alerts", ConnectorAlertViewSet, basename="opsalert")

v1 = [*router.urls, path("kpis/", KpiView.as_view(), name="kpis")]

urlpatterns = [
    path("v1/", include((v1, "v1"), namespace="v1")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    re_path(r"^", problem_not_found),
]
