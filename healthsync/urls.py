from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from healthsync import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # Before api/: that URLconf ends in a catch-all 404.
    path("api/v1/inbound/", include("connectors.rest.urls")),
    path("api/", include("healthsync.api.urls")),
    path("api-clients/", include("healthsync.api.console_urls")),
    path("dashboard/", include("dashboards.urls")),
    path("exceptions/", include("workflows.urls")),
    path("workflows/", include("workflows.urls_runs")),
    path("governance/", include("healthsync.urls_governance")),
    path("fhir/", include("connectors.fhir.urls")),
    path("connectors/", include("healthsync.urls_connectors")),
    path("ops/", include("healthsync.urls_ops")),
    path("messages/", views.message_list, name="message_list"),
    path("messages/<int:pk>/", views.message_detail, name="message_detail"),
]
