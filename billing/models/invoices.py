"""Invoices and their lines, the number series, and credit notes.

An invoice is a contract's charges for one month; once finalized it is numbered and the
database refuses every change but to its payment fields (migration ``0002_database_rules``),
as it does for its lines and for credit notes but their refund fields.
"""

from __future__ import annotations

from typing import Self

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization, TenantQuerySet, User
from capacity.models import Currency
from contracts.models import Contract, ContractLine


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


class DraftFailure(models.Model):
    """A contract whose invoice for a month could not be drafted, and why: for finance.

    ``billing.invoices.draft_invoices`` drafts every other contract and records this
    instead of failing the period close; the contract's invoice is not finalized while
    it stands (a draft from before the failure would be stale), and a later successful
    draft removes it. Finance sees it in the admin.
    """

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="draft_failures")
    # First day of the month whose invoice failed (UTC).
    month = models.DateField()
    # The error, as raised ("NumericValueOutOfRange: bigint out of range").
    error = models.TextField()
    # Last time drafting failed; attempts counts the failed runs since the first one.
    failed_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["-failed_at"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "month"], name="draftfailure_one_per_month")
        ]

    def __str__(self) -> str:
        return f"draft of contract {self.contract_id} for {self.month:%Y-%m} failed"


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
    # The key of the finance form that issued it (minted per render; empty when issued
    # without a form): a form submitted twice issues one credit note per invoice.
    submission_key = models.CharField(max_length=64, blank=True, default="")
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
            models.UniqueConstraint(
                fields=["invoice", "submission_key"],
                condition=~Q(submission_key=""),
                name="creditnote_submission_once",
            ),
        ]

    def __str__(self) -> str:
        return self.number
