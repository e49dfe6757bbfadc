"""The beat entry that starts a metering sweep every poll interval (editable in the admin)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

SWEEP_TASK_NAME = "metering: sweep due nodes"
SWEEP_TASK = "capacity.metering.tasks.sweep"


def ensure_sweep_schedule(*, interval_schedule: Any, periodic_task: Any) -> None:
    """Reference data of metering (see config.reference_data): the beat entry. Takes
    django-celery-beat's ``IntervalSchedule`` and ``PeriodicTask`` model classes."""
    interval, _ = interval_schedule.objects.get_or_create(
        every=settings.METERING_POLL_INTERVAL_SECONDS, period="seconds"
    )
    periodic_task.objects.get_or_create(
        name=SWEEP_TASK_NAME,
        defaults={
            "task": SWEEP_TASK,
            "interval": interval,
            # A sweep that waited longer than one interval is stale: the next one is due.
            "expire_seconds": settings.METERING_POLL_INTERVAL_SECONDS,
            "description": "Claims the nodes due for polling and fans them out to poll_batch.",
        },
    )
