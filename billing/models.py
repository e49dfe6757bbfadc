"""Billing's tables: Stripe customers, invoices and their lines, credit notes, payment
attempts, Stripe events, and the double-entry ledger.

Money is integer minor units (cents) with a currency code; unit prices are ``Decimal``.
What must hold whatever the application does is enforced by PostgreSQL (migration
``0002_database_rules``): a finalized invoice, its lines and a credit note refuse every
change but their payment fields, and refuse deletion; journal rows are append-only and
every journal entry balances to zero per currency (a deferred constraint trigger).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Self

from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import RangeOperators
from django.db import models
from django.db.models import F, Func, Q, Value
from django.utils import timezone

from accounts.models import Organization, TenantQuerySet, User
from capacity.models import Currency, Node, Site
from contracts.models import Contract, ContractLine


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


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    # Numbered, immutable (the database refuses changes but to the payment fields).
    FINALIZED = "finalized", "Finalized"


class PaymentStatus(models.TextChoices):
    NOT_DUE = "not_due", "Not due yet"  # draft
    UNPAID = "unpaid", "Unpaid"  # finalized, not charged yet
    PROCESSING = "processing", "Processing"
    REQUIRES_ACTION = "requires_action", "Needs authentication"
    FAILED = "failed", "Payment failed"  # in dunning: a retry is scheduled
    OVERDUE = "overdue", "Overdue"  # dunning exhausted: the contract is suspended
    PAID = "paid", "Paid"
    NOTHING_DUE = "nothing_due", "Nothing due"  # total (after credit notes) is zero


# Statuses in which an invoice still waits for money.
OUTSTANDING_STATUSES = (
    PaymentStatus.UNPAID,
    PaymentStatus.PROCESSING,
    PaymentStatus.REQUIRES_ACTION,
    PaymentStatus.FAILED,
    PaymentStatus.OVERDUE,
)
# Columns of a finalized invoice the database lets change (migration 0002 lists the same).
INVOICE_PAYMENT_FIELDS = (
    "payment_status",
    "amount_paid_minor",
    "amount_credited_minor",
    "amount_refunded_minor",
    "paid_at",
    "payment_attempt_count",
    "next_payment_attempt_at",
    "dunning_exhausted_at",
    "last_payment_error",
    "updated_at",
)


class InvoiceQuerySet(TenantQuerySet):
    tenant_path = "buyer"

    def finalized(self) -> Self:
        return self.filter(status=InvoiceStatus.FINALIZED)


class Invoice(models.Model):
    """A contract's charges for one calendar month (UTC), in arrears.

    Drafted when the month ends, recomputed while a draft, finalized after the grace
    window with a gap-free number; from then on only the payment fields move.
    """

    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="invoices")
    # The contract's buyer, copied so tenant scoping needs no join.
    buyer = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="invoices")
    # First day of the billed month (UTC).
    month = models.DateField()
    currency = models.CharField(max_length=3, choices=Currency.choices)
    status = models.CharField(
        max_length=16, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT
    )
    # HG-YYYY-NNNNNN, gap-free per year of finalization; null while a draft.
    number = models.CharField(max_length=20, null=True, blank=True, unique=True)
    # Sum of the lines' rounded amounts, in minor units.
    total_minor = models.BigIntegerField(default=0)
    drafted_at = models.DateTimeField(default=timezone.now)
    finalized_at = models.DateTimeField(null=True, blank=True)

    # -- payment fields: the only columns that change once finalized ---------------------
    payment_status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.NOT_DUE
    )
    # Collected through Stripe, in minor units (gross, before Stripe's fee).
    amount_paid_minor = models.BigIntegerField(default=0)
    # Sum of the credit notes issued against the invoice.
    amount_credited_minor = models.BigIntegerField(default=0)
    # Sum of the refunds paid back for those credit notes.
    amount_refunded_minor = models.BigIntegerField(default=0)
    paid_at = models.DateTimeField(null=True, blank=True)
    payment_attempt_count = models.PositiveSmallIntegerField(default=0)
    # When dunning charges the card again; null when nothing is scheduled.
    next_payment_attempt_at = models.DateTimeField(null=True, blank=True)
    # When the last scheduled retry failed and the contract was suspended.
    dunning_exhausted_at = models.DateTimeField(null=True, blank=True)
    last_payment_error = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = InvoiceQuerySet.as_manager()

    class Meta:
        ordering = ["-month", "-pk"]
        # Finance admin actions (the Finance group holds them; migration 0004).
        permissions = [
            ("finalize_invoice", "Can finalize invoices"),
            ("void_invoice", "Can void invoices (credit what is left)"),
            ("retry_payment_invoice", "Can retry an invoice's payment"),
        ]
        indexes = [
            models.Index(fields=["buyer", "-month"], name="invoice_buyer_month_idx"),
            models.Index(
                fields=["next_payment_attempt_at"],
                condition=Q(next_payment_attempt_at__isnull=False),
                name="invoice_retry_due_idx",
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["contract", "month"], name="invoice_one_per_month"),
            models.CheckConstraint(
                condition=Q(status="draft", number__isnull=True, finalized_at__isnull=True)
                | Q(status="finalized", number__isnull=False, finalized_at__isnull=False),
                name="invoice_number_iff_finalized",
            ),
            models.CheckConstraint(
                condition=Q(amount_paid_minor__gte=0)
                & Q(amount_credited_minor__gte=0)
                & Q(amount_refunded_minor__gte=0)
                & Q(amount_refunded_minor__lte=models.F("amount_paid_minor")),
                name="invoice_payment_amounts_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"Draft invoice {self.contract_id}/{self.month:%Y-%m}"

    @property
    def is_finalized(self) -> bool:
        return self.status == InvoiceStatus.FINALIZED

    @property
    def amount_due_minor(self) -> int:
        """What the buyer still owes: total less credit notes less net payments."""
        return (
            self.total_minor
            - self.amount_credited_minor
            - (self.amount_paid_minor - self.amount_refunded_minor)
        )

    @property
    def is_outstanding(self) -> bool:
        return self.is_finalized and self.payment_status in OUTSTANDING_STATUSES

    @property
    def period_label(self) -> str:
        return f"{self.month:%B %Y}"


class LineKind(models.TextChoices):
    RESERVED = "reserved", "Reserved GPUs"
    ON_DEMAND_GPU = "on_demand_gpu", "On-demand GPU"
    INFERENCE_INPUT = "inference_input", "Inference input tokens"
    INFERENCE_OUTPUT = "inference_output", "Inference output tokens"
    COMMITMENT_TRUE_UP = "commitment_true_up", "Commitment true-up"
    SLA_CREDIT = "sla_credit", "SLA credit"
    LATE_USAGE = "late_usage", "Late usage"
    EARLY_TERMINATION_FEE = "early_termination_fee", "Early termination fee"


class Meter(models.TextChoices):
    """What a metered line counts, in integer units (``metered_quantity``)."""

    GPU_BUSY_MS = "gpu_busy_ms", "busy GPU-milliseconds"
    INPUT_TOKENS = "input_tokens", "input tokens"
    OUTPUT_TOKENS = "output_tokens", "output tokens"


class InvoiceLine(models.Model):
    """One rounded charge or credit. Its amount was rounded once, half-up, to the cent."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=24, choices=LineKind.choices)
    contract_line = models.ForeignKey(
        ContractLine, null=True, blank=True, on_delete=models.PROTECT, related_name="invoice_lines"
    )
    description = models.CharField(max_length=300)
    # The month the charge belongs to: the invoice's, or an earlier one for late usage.
    service_month = models.DateField()
    # Quantity in ``unit`` as shown (GPU-hours, million tokens), exact.
    quantity = models.DecimalField(max_digits=24, decimal_places=9, null=True, blank=True)
    unit = models.CharField(max_length=24, blank=True)
    unit_price = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    # Metered lines: what ``meter`` counted, in its integer unit; late usage is the part of
    # a month's metered total not yet on any invoice.
    meter = models.CharField(max_length=16, choices=Meter.choices, blank=True)
    metered_quantity = models.BigIntegerField(null=True, blank=True)
    # Signed: credits are negative.
    amount_minor = models.BigIntegerField()

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="invoiceline_position"),
            models.CheckConstraint(
                condition=Q(meter="") | Q(metered_quantity__gte=0),
                name="invoiceline_metered_quantity",
            ),
        ]
        indexes = [
            models.Index(
                fields=["contract_line", "service_month", "meter"], name="invoiceline_usage_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount_minor}"

    @property
    def is_late_usage(self) -> bool:
        return self.kind == LineKind.LATE_USAGE


class DocumentCounter(models.Model):
    """Last number issued in a series and year ("HG-2026", "CN-2026"). Locked FOR UPDATE
    by the transaction that issues the next one, so numbers are gap-free and unique."""

    series = models.CharField(max_length=16, primary_key=True)
    last_number = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.series}: {self.last_number}"


class RefundStatus(models.TextChoices):
    NONE = "none", "No refund"  # the invoice was not paid: the credit reduces what is due
    PENDING = "pending", "Refund pending"
    SUCCEEDED = "succeeded", "Refunded"
    FAILED = "failed", "Refund failed"


class CreditNoteQuerySet(TenantQuerySet):
    tenant_path = "invoice__buyer"


class CreditNote(models.Model):
    """Money given back against a finalized invoice. Immutable but for its refund fields."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    # CN-YYYY-NNNNNN, gap-free per year.
    number = models.CharField(max_length=20, unique=True)
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3, choices=Currency.choices)
    reason = models.TextField()
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # -- refund fields: the only columns that change ---------------------------------------
    refund_status = models.CharField(
        max_length=16, choices=RefundStatus.choices, default=RefundStatus.NONE
    )
    # Part of the credit paid back by card (≤ amount_minor; the rest reduced what was due).
    refund_amount_minor = models.BigIntegerField(default=0)
    stripe_refund_id = models.CharField(max_length=64, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)

    objects = CreditNoteQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="creditnote_positive"),
            models.CheckConstraint(
                condition=Q(refund_amount_minor__gte=0)
                & Q(refund_amount_minor__lte=models.F("amount_minor")),
                name="creditnote_refund_within_amount",
            ),
        ]

    def __str__(self) -> str:
        return self.number


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


# -- ledger ---------------------------------------------------------------------------------


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


# -- settlement: revenue shares, statements, payouts ----------------------------------------


class RevenueKind(models.TextChoices):
    """What a partner agreement prices: the kinds of revenue partners' GPUs earn."""

    RESERVED = "reserved", "Reserved GPUs"
    ON_DEMAND_GPU = "on_demand_gpu", "On-demand GPU"
    INFERENCE = "inference", "Inference"
    # Lines no GPU earned (commitment true-up, early-termination fee): all platform.
    PLATFORM = "platform", "Platform only"


class PartnerAgreementQuerySet(TenantQuerySet):
    tenant_path = "partner"


class PartnerAgreement(models.Model):
    """A partner's revenue share for one kind of revenue over ``[effective_from,
    effective_until)`` (service months). Never edited once used: a new share is a new
    agreement (``agreements.agreement_create`` closes the one it supersedes); an
    exclusion constraint keeps a partner's agreements for one kind from overlapping."""

    partner = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="agreements")
    line_kind = models.CharField(
        max_length=16,
        choices=[(k.value, k.label) for k in RevenueKind if k != RevenueKind.PLATFORM],
    )
    # Fraction of each attributed amount the partner earns (0.8000 = 80 %), exact.
    partner_share = models.DecimalField(max_digits=5, decimal_places=4)
    # First day of the first service month it applies to (UTC calendar date).
    effective_from = models.DateField()
    # First day it no longer applies (exclusive); null = open-ended.
    effective_until = models.DateField(null=True, blank=True)
    note = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = PartnerAgreementQuerySet.as_manager()

    class Meta:
        ordering = ["partner", "line_kind", "-effective_from"]
        constraints = [
            models.CheckConstraint(
                condition=Q(partner_share__gte=Decimal(0)) & Q(partner_share__lte=Decimal(1)),
                name="agreement_share_is_a_fraction",
            ),
            models.CheckConstraint(
                condition=Q(effective_until__isnull=True)
                | Q(effective_until__gt=F("effective_from")),
                name="agreement_dates_ordered",
            ),
            ExclusionConstraint(
                name="agreement_no_overlap",
                expressions=[
                    ("partner", RangeOperators.EQUAL),
                    ("line_kind", RangeOperators.EQUAL),
                    (
                        Func(
                            F("effective_from"),
                            F("effective_until"),
                            Value("[)"),
                            function="daterange",
                            output_field=models.DateField(),
                        ),
                        RangeOperators.OVERLAPS,
                    ),
                ],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.partner}: {self.partner_share:%} of {self.get_line_kind_display()}"


class StatementStatus(models.TextChoices):
    DRAFT = "draft", "Draft"  # recomputed by the period close until finance approves it
    APPROVED = "approved", "Approved"  # frozen; its settlement is in the ledger
    PAID = "paid", "Paid"  # transferred (or nothing to transfer)


class SettlementStatementQuerySet(TenantQuerySet):
    tenant_path = "partner"


class SettlementStatement(models.Model):
    """What a partner earned for a month, in one currency, and what is paid out.

    ``balance = earnings + adjustments + carried_in``; a positive balance is paid out in
    full (``payout_minor``), a negative one is carried to the next statement
    (``carried_out_minor``) and never paid. The check constraints hold the arithmetic.
    """

    partner = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="statements")
    # First day of the settled month (UTC).
    month = models.DateField()
    currency = models.CharField(max_length=3, choices=Currency.choices)
    status = models.CharField(
        max_length=16, choices=StatementStatus.choices, default=StatementStatus.DRAFT
    )
    # Sum of the partner shares of the attributions settled here (minor units; signed).
    earnings_minor = models.BigIntegerField(default=0)
    # Sum of the partner shares of the adjustments settled here (credit notes; ≤ 0 usually).
    adjustments_minor = models.BigIntegerField(default=0)
    # The previous statement's negative balance brought forward (≤ 0).
    carried_in_minor = models.BigIntegerField(default=0)
    balance_minor = models.BigIntegerField(default=0)
    # What is transferred: the balance when positive, else 0.
    payout_minor = models.BigIntegerField(default=0)
    # The balance when negative, else 0: the next statement's carried_in_minor.
    carried_out_minor = models.BigIntegerField(default=0)
    drafted_at = models.DateTimeField(default=timezone.now)
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    paid_at = models.DateTimeField(null=True, blank=True)

    objects = SettlementStatementQuerySet.as_manager()

    class Meta:
        ordering = ["-month", "partner", "currency"]
        permissions = [
            ("approve_settlementstatement", "Can approve settlement statements"),
            ("pay_settlementstatement", "Can pay settlement statements out"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["partner", "month", "currency"], name="statement_one_per_partner_month"
            ),
            models.CheckConstraint(
                condition=Q(carried_in_minor__lte=0)
                & Q(payout_minor__gte=0)
                & Q(carried_out_minor__lte=0),
                name="statement_never_pays_a_negative_balance",
            ),
            models.CheckConstraint(
                condition=Q(
                    balance_minor=F("earnings_minor")
                    + F("adjustments_minor")
                    + F("carried_in_minor")
                )
                & Q(balance_minor=F("payout_minor") + F("carried_out_minor"))
                & (Q(payout_minor=0) | Q(carried_out_minor=0)),
                name="statement_balance_adds_up",
            ),
            models.CheckConstraint(
                condition=Q(status="draft", approved_at__isnull=True)
                | Q(status__in=["approved", "paid"], approved_at__isnull=False),
                name="statement_approved_iff_not_draft",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.partner} {self.month:%Y-%m} {self.currency}"

    @property
    def reference(self) -> str:
        return f"ST-{self.month:%Y%m}-{self.pk:05d}"

    @property
    def net_minor(self) -> int:
        """This month's own movement (without the carried balance): what the ledger posts."""
        return self.earnings_minor + self.adjustments_minor


class AttributionQuerySet(TenantQuerySet):
    tenant_path = "partner"


class Attribution(models.Model):
    """The part of one paid invoice line one node earned, split into the partner's share
    (rounded down to the cent) and the platform's fee (the remainder).

    Lines no node earned get one row with no node and no partner (all platform), so the
    attributions of a paid line always add up to its amount. Unique per (line, node):
    attributing twice is impossible; ``statement`` is set once, by a conditional update,
    so each attribution is settled exactly once.
    """

    invoice_line = models.ForeignKey(
        InvoiceLine, on_delete=models.PROTECT, related_name="attributions"
    )
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="attributions")
    node = models.ForeignKey(
        Node, null=True, blank=True, on_delete=models.PROTECT, related_name="attributions"
    )
    # Copied from the node so statements group without joins; null for platform-only rows.
    site = models.ForeignKey(
        Site, null=True, blank=True, on_delete=models.PROTECT, related_name="attributions"
    )
    partner = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="attributions",
    )
    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="+")
    # The buyer, for the anonymized alias partners see (never shown by name).
    buyer = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    revenue_kind = models.CharField(max_length=16, choices=RevenueKind.choices)
    service_month = models.DateField()
    currency = models.CharField(max_length=3, choices=Currency.choices)
    # What the split was weighted by, for this node: reserved GPU-seconds, busy GPU-ms,
    # tokens, or down GPU-minutes for an SLA credit (0 for platform-only rows).
    basis_quantity = models.DecimalField(max_digits=24, decimal_places=6, default=0)
    basis_unit = models.CharField(max_length=24, blank=True)
    # Signed, minor units: an SLA credit is negative.
    amount_minor = models.BigIntegerField()
    partner_share_minor = models.BigIntegerField()
    platform_fee_minor = models.BigIntegerField()
    # The agreement's share as applied (0 for platform-only rows).
    share = models.DecimalField(max_digits=5, decimal_places=4)
    statement = models.ForeignKey(
        SettlementStatement,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="attributions",
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = AttributionQuerySet.as_manager()

    class Meta:
        ordering = ["invoice_line", "node"]
        indexes = [
            models.Index(
                fields=["partner", "currency"],
                condition=Q(statement__isnull=True, partner__isnull=False),
                name="attribution_unsettled_idx",
            )
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice_line", "node"],
                name="attribution_once_per_line_node",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=Q(amount_minor=F("partner_share_minor") + F("platform_fee_minor")),
                name="attribution_share_plus_fee_is_amount",
            ),
            models.CheckConstraint(
                condition=Q(node__isnull=True, partner__isnull=True, partner_share_minor=0)
                | Q(node__isnull=False, partner__isnull=False),
                name="attribution_partner_iff_node",
            ),
            models.CheckConstraint(
                condition=Q(statement__isnull=True) | Q(partner__isnull=False),
                name="attribution_only_partners_settle",
            ),
        ]

    def __str__(self) -> str:
        return f"line {self.invoice_line_id} → node {self.node_id}: {self.amount_minor}"


class StatementAdjustmentQuerySet(TenantQuerySet):
    tenant_path = "partner"


class StatementAdjustment(models.Model):
    """A partner's part of a credit note on an invoice already attributed: the credit is
    split over the partners (and the platform) in proportion to what each was attributed
    of the invoice, and settled on the partner's next statement. Unique per (credit note,
    partner); the platform's part is the row without a partner."""

    credit_note = models.ForeignKey(
        CreditNote, on_delete=models.PROTECT, related_name="adjustments"
    )
    partner = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="statement_adjustments",
    )
    currency = models.CharField(max_length=3, choices=Currency.choices)
    # The part of the credit note given back (negative, minor units).
    amount_minor = models.BigIntegerField()
    partner_share_minor = models.BigIntegerField()
    platform_fee_minor = models.BigIntegerField()
    reason = models.CharField(max_length=300)
    statement = models.ForeignKey(
        SettlementStatement,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="adjustments",
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = StatementAdjustmentQuerySet.as_manager()

    class Meta:
        ordering = ["credit_note", "partner"]
        constraints = [
            models.UniqueConstraint(
                fields=["credit_note", "partner"],
                name="adjustment_once_per_note_partner",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=Q(amount_minor=F("partner_share_minor") + F("platform_fee_minor")),
                name="adjustment_share_plus_fee_is_amount",
            ),
            models.CheckConstraint(
                condition=Q(amount_minor__lte=0), name="adjustment_gives_money_back"
            ),
            models.CheckConstraint(
                condition=Q(statement__isnull=True) | Q(partner__isnull=False),
                name="adjustment_only_partners_settle",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.credit_note} → {self.partner}: {self.partner_share_minor}"


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
