"""Partner payouts: the Stripe Connect account and the transfer of a statement's balance."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization, TenantQuerySet, User
from billing.models.settlement import SettlementStatement
from capacity.models import Currency


class ConnectAccountQuerySet(TenantQuerySet):
    tenant_path = "partner"


class ConnectAccount(models.Model):
    """A partner's Stripe Connect account (Express), where payouts are transferred."""

    partner = models.OneToOneField(
        Organization, on_delete=models.PROTECT, related_name="connect_account"
    )
    stripe_account_id = models.CharField(max_length=64, unique=True)
    # As Stripe last said (refreshed when the partner returns from onboarding).
    details_submitted = models.BooleanField(default=False)
    payouts_enabled = models.BooleanField(default=False)
    # The account's ``transfers`` capability is active: we may transfer to it.
    transfers_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConnectAccountQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.stripe_account_id} ({self.partner})"

    @property
    def can_receive_payouts(self) -> bool:
        return self.details_submitted and self.transfers_active

    @property
    def status_label(self) -> str:
        if self.can_receive_payouts:
            return "Ready for payouts"
        if self.details_submitted:
            return "Under review at Stripe"
        return "Onboarding not finished"


class PayoutStatus(models.TextChoices):
    # Recorded before Stripe is called: a crash leaves it pending and the retry re-sends
    # the same idempotency key, so Stripe answers with the transfer it already made.
    PENDING = "pending", "Pending"
    PAID = "paid", "Transferred"
    FAILED = "failed", "Failed"  # refused by Stripe; retried with the next attempt's key


class PayoutQuerySet(TenantQuerySet):
    tenant_path = "partner"


class Payout(models.Model):
    """The Connect transfer of one statement's positive balance. One per statement; the
    idempotency key is the statement and the attempt, so a retry never pays twice."""

    statement = models.OneToOneField(
        SettlementStatement, on_delete=models.PROTECT, related_name="payout"
    )
    partner = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="payouts")
    connect_account = models.ForeignKey(
        ConnectAccount, on_delete=models.PROTECT, related_name="payouts"
    )
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3, choices=Currency.choices)
    status = models.CharField(
        max_length=16, choices=PayoutStatus.choices, default=PayoutStatus.PENDING
    )
    attempt_number = models.PositiveSmallIntegerField(default=1)
    idempotency_key = models.CharField(max_length=64, unique=True)
    stripe_transfer_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PayoutQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_minor__gt=0), name="payout_never_negative_or_zero"
            ),
            models.CheckConstraint(
                condition=~Q(status="paid") | Q(stripe_transfer_id__isnull=False),
                name="payout_paid_has_transfer",
            ),
        ]

    def __str__(self) -> str:
        return f"payout of {self.statement}: {self.amount_minor} {self.currency}"
