"""Create the beat entry that starts a metering sweep every poll interval.

Editable afterwards in the admin (Periodic tasks); running this again changes nothing.
The interval comes from METERING_POLL_INTERVAL_SECONDS at the time of the migration.
"""

from django.conf import settings
from django.db import migrations

SWEEP_TASK_NAME = "metering: sweep due nodes"
SWEEP_TASK = "capacity.metering.tasks.sweep"


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(
        every=settings.METERING_POLL_INTERVAL_SECONDS, period="seconds"
    )
    PeriodicTask.objects.get_or_create(
        name=SWEEP_TASK_NAME,
        defaults={
            "task": SWEEP_TASK,
            "interval": interval,
            # A sweep that waited longer than one interval is stale: the next one is due.
            "expire_seconds": settings.METERING_POLL_INTERVAL_SECONDS,
            "description": "Claims the nodes due for polling and fans them out to poll_batch.",
        },
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=SWEEP_TASK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
