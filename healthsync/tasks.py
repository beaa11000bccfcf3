"""django-q2 tasks of the sync runtime, enqueued by dotted path (healthsync.tasks.<name>)."""

from __future__ import annotations

from healthsync import deliveries, pipeline

SCHEDULES = {
    # Safety nets: listeners enqueue process_pending after each store and deliveries are enqueued on commit,
    # so these only pick up work whose enqueue was lost and deliveries whose retry time has come.
    "healthsync.process_pending": "healthsync.tasks.process_pending",
    "healthsync.deliver_due": "healthsync.tasks.deliver_due",
}


def process_pending(limit: int | None = None) -> int:
    """Process received messages; returns how many were handled."""
    return pipeline.process_pending(limit)


def deliver(delivery_id: int) -> str:
    """Send one delivery; returns its status afterwards."""
    return deliveries.deliver(delivery_id)


def deliver_many(delivery_ids: list[int]) -> dict[int, str]:
    """Send the deliveries one transaction asked for, in order; returns each one's status afterwards."""
    return deliveries.deliver_many(delivery_ids)


def deliver_due() -> int:
    """Send the deliveries whose retry time has come."""
    return deliveries.deliver_due()


def ensure_schedules() -> None:
    """Upsert the runtime's django-q2 schedules and every declared job's, by name (Schedule.name is not unique)."""
    from django_q.models import Schedule

    from healthsync.jobs import jobs_sync_schedules

    jobs_sync_schedules()

    for name, func in SCHEDULES.items():
        schedule = Schedule.objects.filter(name=name).order_by("id").first()
        if schedule is None:
            Schedule.objects.create(
                name=name, func=func, schedule_type=Schedule.MINUTES, minutes=1, repeats=-1
            )
        elif schedule.func != func or schedule.schedule_type != Schedule.MINUTES:
            schedule.func, schedule.schedule_type, schedule.minutes = func, Schedule.MINUTES, 1
            schedule.save()
