"""Money coming in: the buyer's Stripe customer and card, payment attempts, Stripe events."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization, TenantQuerySet
from billing.models.invoices import Invoice
from capacity.models import Currency


class BillingCustomer(models.Model):
    """The Stripe customer of a buyer organization and the card saved for it."""

    organization = models.OneToOneField(
        Organization, on_delete=models.PROTECT, related_name="billing_customer"
    )
    stripe_customer_id = models.CharField(max_length=64, unique=True)
    # The card future invoices are charged to (saved through a SetupIntent); '' = none.
    default_payment_method_id = models.CharField(max_length=64, blank=True)
    card_brand = models.CharField(max_length=32, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    card_exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    card_exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.stripe_customer_id} ({self.organization})"

    @property
    def has_payment_method(self) -> bool:
        return bool(self.default_payment_method_id)


class AttemptStatus(models.TextChoices):
    # Recorded before Stripe is called: a crash leaves it pending and the retry re-sends
    # the same idempotency key, so Stripe answers with the same PaymentIntent.
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    REQUIRES_ACTION = "requires_action", "Needs authentication"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class PaymentAttemptQuerySet(TenantQuerySet):
    tenant_path = "invoice__buyer"


class PaymentAttempt(models.Model):
    """One PaymentIntent for an invoice. The idempotency key is the invoice and the attempt
    number: retrying the same attempt can never charge twice."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="attempts")
    attempt_number = models.PositiveSmallIntegerField()
    idempotency_key = models.CharField(max_length=64, unique=True)
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3, choices=Currency.choices)
    # Charged without the buyer present (period close, dunning) or from the invoice page.
    off_session = models.BooleanField(default=True)
    # The card this attempt charges, fixed when the attempt is recorded: a replay under the
    # same idempotency key must send the same parameters, or Stripe refuses it. A card saved
    # later is for the next attempt. '' on attempts recorded before this was kept.
    payment_method_id = models.CharField(max_length=64, blank=True)
    stripe_payment_intent_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    status = models.CharField(
        max_length=16, choices=AttemptStatus.choices, default=AttemptStatus.PENDING
    )
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=300, blank=True)
    stripe_charge_id = models.CharField(max_length=64, blank=True)
    # Stripe's fee for the charge, from its balance transaction; null until known.
    fee_minor = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PaymentAttemptQuerySet.as_manager()

    class Meta:
        ordering = ["invoice", "attempt_number"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice", "attempt_number"], name="paymentattempt_unique_number"
            ),
            models.CheckConstraint(
                condition=Q(amount_minor__gt=0), name="paymentattempt_amount_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.invoice} attempt {self.attempt_number} ({self.status})"


class StripeEvent(models.Model):
    """A webhook event, stored once by Stripe's id (a replay finds it and does nothing)."""

    event_id = models.CharField(max_length=64, unique=True)
    type = models.CharField(max_length=64)
    # The object the event is about (we re-fetch it: payloads may arrive out of order).
    object_id = models.CharField(max_length=64, blank=True)
    # When Stripe created the event.
    stripe_created_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    payload = models.JSONField()

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"
