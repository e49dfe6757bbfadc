from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from billing.reference_data import ensure_finance_group
        from config import reference_data

        reference_data.connect(self, ensure_finance_group)
