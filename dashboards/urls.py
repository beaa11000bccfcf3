from __future__ import annotations

from django.urls import path

from dashboards import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("tiles/", views.dashboard_tiles, name="dashboard_tiles"),
    path("export.csv", views.export_csv, name="dashboard_export"),
    path("export/<slug:table>.csv", views.export_csv, name="dashboard_export_table"),
    path("drill/<slug:table>/", views.drill, name="dashboard_drill"),
]
