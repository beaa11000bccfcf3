"""/api/v1/inbound/: the REST/JSON endpoint ERP and RCM systems push to (mounted from the root URLconf)."""

from __future__ import annotations

from django.urls import path

from connectors.rest import views

urlpatterns = [
    path("<slug:code>/", views.RestInboundView.as_view(), name="rest_inbound"),
]
