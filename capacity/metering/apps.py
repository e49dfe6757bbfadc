from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "capacity.metering"
    label = "metering"
    verbose_name = "Metering"

    def ready(self) -> None:
        from capacity.metering.schedule import ensure_sweep_schedule
        from config import reference_data

        reference_data.connect(self, ensure_sweep_schedule)
