from __future__ import annotations

from django.urls import path

from healthsync import views_connectors as views

urlpatterns = [
    path("", views.connector_list, name="connector_list"),
    path("new/", views.connector_create, name="connector_create"),
    path("<slug:code>/", views.connector_detail, name="connector_detail"),
    path("<slug:code>/edit/", views.connector_edit, name="connector_edit"),
    path("<slug:code>/test/", views.connector_test, name="connector_test"),
    path("<slug:code>/health/", views.connector_health_panel, name="connector_health"),
]
