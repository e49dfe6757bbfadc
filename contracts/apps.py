from functools import partial

from django.apps import AppConfig


class ContractsConfig(AppConfig):
    name = "contracts"
    verbose_name = "Contracts"

    def ready(self) -> None:
        """Keep the reference rows, and fill the seams of the layers below (accounts,
        capacity, metering): they ask contracts' questions without importing contracts."""
        from django.utils import timezone

        from accounts import selectors as account_selectors
        from capacity import selectors as capacity_selectors
        from capacity import services as capacity_services
        from capacity.metering import assignments as metering_assignments
        from capacity.metering import attribution as metering_attribution
        from capacity.metering import selectors as metering_selectors
        from config import reference_data
        from contracts import assignments, selectors, workload_selectors
        from contracts.attribution import attribute_usage_records
        from contracts.models import InferenceProduct, SlaCreditTier, SlaPolicy
        from contracts.reference_data import ensure_defaults
        from contracts.window_notices import notify_buyers_of_window

        reference_data.connect(
            self,
            partial(
                ensure_defaults,
                sla_policy=SlaPolicy,
                sla_credit_tier=SlaCreditTier,
                inference_product=InferenceProduct,
            ),
        )
        account_selectors.register_api_key_refusal(selectors.api_key_refusal)
        account_selectors.register_api_key_uses(selectors.api_key_uses)
        capacity_selectors.register_future_allocation_check(
            lambda node: selectors.node_has_future_allocations(node_id=node.pk, now=timezone.now())
        )
        capacity_selectors.register_served_products(
            lambda node: selectors.node_served_products(node_id=node.pk)
        )
        capacity_selectors.register_node_workloads(
            lambda node, now: workload_selectors.node_workloads(node_id=node.pk, now=now)
        )
        capacity_selectors.register_offer_commitment(
            lambda offer, now: selectors.offer_committed_gpus(offer_id=offer.pk, now=now)
        )
        metering_attribution.register_attributor(attribute_usage_records)
        metering_assignments.register(
            load_plans=assignments.load_plans, apply_reports=assignments.apply_reports
        )
        capacity_services.register_window_listener(notify_buyers_of_window)
        metering_selectors.register_served_products(selectors.served_inference_products)
