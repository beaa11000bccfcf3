from __future__ import annotations

from django.urls import path

from workflows import views

urlpatterns = [
    path("", views.exception_list, name="exception_list"),
    path("counts/", views.exception_counts, name="exception_counts"),
    path("bulk/", views.exception_bulk, name="exception_bulk"),
    path("<int:pk>/", views.exception_detail, name="exception_detail"),
    path("<int:pk>/<slug:action>/", views.exception_action, name="exception_action"),
]
