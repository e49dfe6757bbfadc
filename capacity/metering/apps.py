from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "capacity.metering"
    label = "metering"
    verbose_name = "Metering"
