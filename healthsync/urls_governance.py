"""Governance pages, mounted under /governance/."""

from __future__ import annotations

from django.urls import path

from healthsync import views_governance as views

urlpatterns = [
    path("", views.inbox, name="governance_inbox"),
    path("changes/<int:pk>/", views.change_detail, name="governance_change"),
    path("changes/<int:pk>/review/", views.change_review, name="governance_review"),
    path("changes/<int:pk>/<str:action>/", views.change_transition, name="governance_transition"),
    path("propose/<str:kind>/", views.propose, name="governance_propose"),
    path("mappings/", views.mapping_list, name="governance_mappings"),
    path("mappings/<slug:code>/edit/", views.mapping_edit, name="governance_mapping_edit"),
    path("mappings/<slug:code>/bench/", views.mapping_bench, name="governance_bench"),
    path("audit/", views.audit_log, name="governance_audit"),
]
