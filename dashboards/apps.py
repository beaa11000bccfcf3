from __future__ import annotations

from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    name = "dashboards"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from dashboards import rollups
        from healthsync.jobs import JobSpec, register_job
        from workflows.models import WorkflowRun, WorkflowStep

        # A workflow saves its run whenever it records a step (the run's current step changes), so a run save
        # marks the run dirty once; marking on every step insert as well doubled the hot path's writes.
        post_save.connect(rollups.on_run_saved, sender=WorkflowRun, dispatch_uid="dashboards.run_saved")
        post_delete.connect(
            rollups.on_step_changed, sender=WorkflowStep, dispatch_uid="dashboards.step_deleted"
        )
        register_job(
            JobSpec(
                "kpi-rollup",
                "dashboards.rollups.refresh_job",
                minutes=1,
                counter="refreshed",
                description="Recompute the KPI facts of runs changed since the last pass.",
            )
        )
        register_job(
            JobSpec(
                "kpi-rollup-rebuild",
                "dashboards.rollups.rebuild_job",
                daily_at="02:30",
                counter="rebuilt",
                timeout_seconds=4 * 3600,
                description="Recompute every KPI fact from the runs and their steps.",
            )
        )
