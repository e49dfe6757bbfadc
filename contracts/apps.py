from django.apps import AppConfig


class ContractsConfig(AppConfig):
    name = "contracts"
    verbose_name = "Contracts"

    def ready(self) -> None:
        """Fill capacity's and metering's seams without them importing contracts."""
        from django.utils import timezone

        from config import reference_data
        from contracts.reference_data import ensure_defaults

        reference_data.connect(self, ensure_defaults)

        from capacity import selectors as capacity_selectors
        from contracts import selectors

        capacity_selectors.register_future_allocation_check(
            lambda node: selectors.node_has_future_allocations(node_id=node.pk, now=timezone.now())
        )
        from capacity.metering import attribution as metering_attribution
        from contracts.attribution import attribute_usage_records

        metering_attribution.register_attributor(attribute_usage_records)
