"""The one seam between checkout and payments: does the buyer have a saved payment method?

Billing keeps the buyer's Stripe customer and the card saved for it through a
SetupIntent (``billing.BillingCustomer.default_payment_method_id``); this reads it through
the app registry, so contracts never imports billing. Without a saved card the setting
``CONTRACTS_ASSUME_PAYMENT_METHOD`` answers: on in development (``DEBUG``) so demos need
no Stripe, off otherwise, so production cannot sign contracts nobody can pay.
"""

from __future__ import annotations

from django.apps import apps
from django.conf import settings

from marketplace.models import Organization


def buyer_has_payment_method(organization: Organization) -> bool:
    customers = apps.get_model("billing", "BillingCustomer")
    if (
        customers.objects.filter(organization=organization)
        .exclude(default_payment_method_id="")
        .exists()
    ):
        return True
    return bool(getattr(settings, "CONTRACTS_ASSUME_PAYMENT_METHOD", settings.DEBUG))
