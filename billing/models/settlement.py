"""Revenue-share settlement: partner agreements, monthly statements, the attribution of
paid invoice lines to the nodes that earned them, and credit-note adjustments."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import RangeOperators
from django.db import models
from django.db.models import F, Func, Q, Value
from django.utils import timezone

from accounts.models import Organization, TenantQuerySet, User
from billing.models.invoices import CreditNote, Invoice, InvoiceLine
from capacity.models import Currency, Node, Site
from contracts.models import Contract


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
