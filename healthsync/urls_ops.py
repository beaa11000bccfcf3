"""Routes of the operations pages, mounted under /ops/."""

from __future__ import annotations

from django.urls import path

from healthsync import views_ops

urlpatterns = [
    path("", views_ops.ops_home, name="ops_home"),
    path("alerts/", views_ops.alert_list, name="ops_alert_list"),
    path("alerts/badge/", views_ops.alert_badge, name="ops_alert_badge"),
    path("alerts/<int:pk>/acknowledge/", views_ops.alert_acknowledge_view, name="ops_alert_acknowledge"),
    path("jobs/", views_ops.job_runs, name="ops_job_runs"),
    path("jobs/<int:pk>/", views_ops.job_run_detail, name="ops_job_run_detail"),
    path("retention/", views_ops.retention, name="ops_retention"),
    path("replay/", views_ops.filtered_replay, name="ops_filtered_replay"),
    path("replays/<int:pk>/", views_ops.replay_detail, name="ops_replay_detail"),
    path("messages/<int:pk>/replay/", views_ops.message_replay_view, name="ops_message_replay"),
]
