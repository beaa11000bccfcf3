from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


class WorkflowsConfig(AppConfig):
    name = "workflows"

    def ready(self) -> None:
        from healthsync.choices import Lane
        from healthsync.jobs import JobSpec, register_job
        from healthsync.services import exception_closed
        from workflows import discharge_to_bill, labour, procure_to_pay, replenishment

        discharge_to_bill.register()
        procure_to_pay.register()
        labour.register()
        replenishment.register()
        register_job(
            JobSpec(
                "sla-check", "workflows.tasks.sla_check", minutes=5, lane=Lane.FINANCIAL, counter="raised"
            )
        )
        register_job(
            JobSpec(
                "release-bill-holds",
                "workflows.tasks.release_bill_holds",
                minutes=15,
                lane=Lane.FINANCIAL,
                counter="released",
            )
        )
        register_job(
            JobSpec(
                "labour-allocation",
                "workflows.tasks.labour_allocation",
                daily_at=getattr(settings, "HEALTHSYNC_LABOUR_WINDOW", "02:00"),
                lane=Lane.BATCH,
                counter="allocated",
                description="Allocate payroll files received through the file connector to cost centres.",
            )
        )
        exception_closed.connect(_on_exception_closed, dispatch_uid="workflows.exception_closed")


def _on_exception_closed(sender: object, exception: object, actor: object = None, **kwargs: object) -> None:
    from workflows import discharge_to_bill

    discharge_to_bill.on_exception_closed(exception, actor)  # type: ignore[arg-type]
