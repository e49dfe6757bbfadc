from functools import partial

from django.apps import AppConfig


class CapacityConfig(AppConfig):
    name = "capacity"
    verbose_name = "Capacity"

    def ready(self) -> None:
        from capacity import checks  # noqa: F401 (registers the deployment checks)
        from capacity.catalog import ensure_gpu_catalog
        from capacity.models import GpuModel
        from config import reference_data

        reference_data.connect(self, partial(ensure_gpu_catalog, GpuModel))
