"""Stripe customers and saved cards of buyer organizations.

A buyer saves a card on the card page: the page asks for a SetupIntent
(``card_setup_start``), Stripe.js confirms it in the browser, and the page hands back its
id; ``card_setup_complete`` re-fetches the SetupIntent from Stripe (the browser's word is
not proof), checks it belongs to this buyer's customer and succeeded, and makes the card
the default for invoice payments. Invoices waiting on a failed payment are retried.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit
from accounts.models import MANAGER_ROLES, Membership, Organization, User
from billing import enqueue, stripe_gateway
from billing.models import BillingCustomer, Invoice, PaymentStatus


def customer_of(organization: Organization) -> BillingCustomer | None:
    return BillingCustomer.objects.filter(organization=organization).first()


def has_payment_method(organization: Organization) -> bool:
    """Whether invoices of ``organization`` can be charged (a saved default card)."""
    return (
        BillingCustomer.objects.filter(organization=organization)
        .exclude(default_payment_method_id="")
        .exists()
    )


def _billing_email(organization: Organization) -> str:
    email = (
        Membership.objects.filter(organization=organization, role__in=MANAGER_ROLES)
        .order_by("created_at", "pk")
        .values_list("user__email", flat=True)
        .first()
    )
    return email or ""


def ensure_customer(*, organization: Organization) -> BillingCustomer:
    """The organization's Stripe customer, created at Stripe on first use.

    The idempotency key is the organization: two concurrent first uses get the same
    Stripe customer, and the unique row keeps one of them.
    """
    existing = customer_of(organization)
    if existing is not None:
        return existing
    stripe_id = stripe_gateway.create_customer(
        organization_id=organization.pk,
        name=organization.name,
        email=_billing_email(organization),
        idempotency_key=f"customer-organization-{organization.pk}",
    )
    customer, _created = BillingCustomer.objects.get_or_create(
        organization=organization, defaults={"stripe_customer_id": stripe_id}
    )
    return customer


def card_setup_start(*, organization: Organization) -> stripe_gateway.SetupIntentView:
    """A SetupIntent for the card page (its client secret goes to Stripe.js only)."""
    if not organization.is_buyer:
        raise ValidationError("Only buyer organizations pay invoices.", code="not_buyer")
    customer = ensure_customer(organization=organization)
    return stripe_gateway.create_setup_intent(customer_id=customer.stripe_customer_id)


def card_setup_complete(
    *, organization: Organization, setup_intent_id: str, actor: User | None
) -> BillingCustomer:
    """Save the card of a SetupIntent the browser confirmed, after checking it at Stripe."""
    customer = customer_of(organization)
    if customer is None:
        raise ValidationError("Start by adding a card.", code="no_customer")
    try:
        intent = stripe_gateway.retrieve_setup_intent(setup_intent_id)
    except stripe_gateway.StripeRequestRejected:
        raise ValidationError("This card setup is unknown.", code="unknown_setup") from None
    if intent.customer_id != customer.stripe_customer_id:
        raise ValidationError("This card setup is unknown.", code="unknown_setup")
    if intent.status != "succeeded" or not intent.payment_method_id:
        raise ValidationError(
            "The card was not confirmed. Try again or use another card.", code="not_confirmed"
        )
    card = stripe_gateway.set_default_payment_method(
        customer_id=customer.stripe_customer_id, payment_method_id=intent.payment_method_id
    )
    return _save_card(customer=customer, card=card, actor=actor)


@transaction.atomic
def _save_card(
    *, customer: BillingCustomer, card: stripe_gateway.CardView, actor: User | None
) -> BillingCustomer:
    BillingCustomer.objects.filter(pk=customer.pk).update(
        default_payment_method_id=card.payment_method_id,
        card_brand=card.brand,
        card_last4=card.last4,
        card_exp_month=card.exp_month,
        card_exp_year=card.exp_year,
        updated_at=timezone.now(),
    )
    customer.refresh_from_db()
    audit(
        action="billing.card_saved",
        actor=actor,
        organization=customer.organization,
        target=customer,
        brand=card.brand,
        last4=card.last4,
    )
    waiting = list(
        Invoice.objects.filter(
            buyer_id=customer.organization_id,
            payment_status__in=(PaymentStatus.FAILED, PaymentStatus.OVERDUE),
        ).values_list("pk", flat=True)
    )
    for invoice_id in waiting:
        enqueue.charge_invoice_on_commit(invoice_id)
    return customer
