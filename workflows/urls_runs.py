from __future__ import annotations

from django.urls import path

from workflows import views_runs

urlpatterns = [
    path("runs/", views_runs.run_list, name="run_list"),
    path("runs/<int:pk>/", views_runs.run_detail, name="run_detail"),
    path("close/", views_runs.close_view, name="close_readiness"),
]
