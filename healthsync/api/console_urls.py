from __future__ import annotations

from django.urls import path

from healthsync.api import console

urlpatterns = [
    path("", console.api_client_list, name="api_client_list"),
    path("<int:pk>/<slug:action>/", console.api_client_action, name="api_client_action"),
]
