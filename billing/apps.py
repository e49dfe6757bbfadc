from functools import partial

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        """Register the Celery tasks (services queue them by name: ``billing.enqueue``),
        answer contracts' question (does the buyer have a saved card?) through its seam,
        and keep the Finance group after every migrate and flush."""
        from django.contrib.auth.models import Group, Permission

        from billing import tasks  # noqa: F401 (registers billing's tasks in every process)
        from billing.customers import has_payment_method
        from billing.reference_data import ensure_finance_group
        from config import reference_data
        from contracts import selectors as contract_selectors

        contract_selectors.register_payment_method_check(has_payment_method)
        reference_data.connect(
            self, partial(ensure_finance_group, group_model=Group, permission_model=Permission)
        )
