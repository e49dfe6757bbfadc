"""Create the beat entry that starts a metering sweep every poll interval.

Editable afterwards in the admin (Periodic tasks); running this again changes nothing.
The interval comes from METERING_POLL_INTERVAL_SECONDS at the time of the migration.
"""

from django.db import migrations

from capacity.metering.schedule import SWEEP_TASK_NAME, ensure_sweep_schedule


def create_schedule(apps, schema_editor):
    ensure_sweep_schedule(
        interval_schedule=apps.get_model("django_celery_beat", "IntervalSchedule"),
        periodic_task=apps.get_model("django_celery_beat", "PeriodicTask"),
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(
        name=SWEEP_TASK_NAME
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
