"""The double-entry ledger: journal entries and their lines.

Append-only and balanced to zero per currency, both enforced by PostgreSQL (migration
``0002_database_rules``: a deferred constraint trigger checks every entry).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization
from billing.models.invoices import CreditNote, Invoice
from billing.models.payments import PaymentAttempt
from capacity.models import Currency


class Account(models.TextChoices):
    """Ledger accounts. Debits are positive, credits negative; an entry sums to zero."""

    RECEIVABLE = "receivable", "Accounts receivable (buyers)"
    REVENUE = "revenue", "Revenue"
    SLA_CREDITS = "sla_credits", "SLA credits (contra-revenue)"
    CREDIT_NOTES = "credit_notes", "Credit notes (contra-revenue)"
    STRIPE_BALANCE = "stripe_balance", "Cash at Stripe"
    STRIPE_FEES = "stripe_fees", "Stripe fees (expense)"
    # What partners earn of the revenue (cost of revenue) and what we owe them until paid
    # out; a partner's payable with a debit balance is a negative balance carried forward.
    PARTNER_SHARE = "partner_share", "Partner revenue share (cost of revenue)"
    PARTNER_PAYABLE = "partner_payable", "Payable to partners"


class EntryKind(models.TextChoices):
    INVOICE_FINALIZED = "invoice_finalized", "Invoice finalized"
    PAYMENT = "payment", "Payment"
    STRIPE_FEE = "stripe_fee", "Stripe fee"
    CREDIT_NOTE = "credit_note", "Credit note"
    REFUND = "refund", "Refund"
    SETTLEMENT = "settlement", "Partner settlement"
    PAYOUT = "payout", "Partner payout"
    REVERSAL = "reversal", "Reversal"


class JournalEntry(models.Model):
    """One money movement. Append-only; a mistake is corrected by a reversing entry."""

    kind = models.CharField(max_length=24, choices=EntryKind.choices)
    # What the entry records, unique: posting the same event twice is impossible
    # ("invoice_finalized:42", "payment:pi_…", "reversal:17").
    key = models.CharField(max_length=120, unique=True)
    memo = models.CharField(max_length=300)
    # When the movement happened (finalization, payment…), not when it was written.
    occurred_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    invoice = models.ForeignKey(
        Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="journal_entries"
    )
    credit_note = models.ForeignKey(
        CreditNote,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="journal_entries",
    )
    payment_attempt = models.ForeignKey(
        PaymentAttempt,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="journal_entries",
    )
    # The entry this one reverses (at most one reversal per entry).
    reverses = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversed_by"
    )

    class Meta:
        ordering = ["occurred_at", "pk"]
        verbose_name_plural = "journal entries"

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind}: {self.memo}"


class JournalLine(models.Model):
    """One side of an entry: a signed amount on one account in one currency."""

    entry = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, related_name="lines")
    account = models.CharField(max_length=32, choices=Account.choices)
    currency = models.CharField(max_length=3, choices=Currency.choices)
    # Debit > 0, credit < 0, in minor units.
    amount_minor = models.BigIntegerField()
    # Whose sub-ledger the line belongs to (the buyer for receivables), if anyone's.
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["entry", "pk"]
        indexes = [models.Index(fields=["account", "currency"], name="journalline_account_idx")]
        constraints = [
            models.CheckConstraint(condition=~Q(amount_minor=0), name="journalline_not_zero")
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.amount_minor} {self.currency}"
