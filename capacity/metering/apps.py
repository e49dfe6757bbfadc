from functools import partial

from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "capacity.metering"
    label = "metering"
    verbose_name = "Metering"

    def ready(self) -> None:
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        from capacity.metering.schedule import ensure_sweep_schedule
        from config import reference_data

        reference_data.connect(
            self,
            partial(
                ensure_sweep_schedule,
                interval_schedule=IntervalSchedule,
                periodic_task=PeriodicTask,
            ),
        )
