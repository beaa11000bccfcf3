from __future__ import annotations

from django.urls import path

from connectors.fhir import views

urlpatterns = [
    path("<slug:code>/", views.receive, name="fhir_transaction"),
    path("<slug:code>/<str:resource_type>", views.receive, name="fhir_create"),
]
