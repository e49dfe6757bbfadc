"""The finance admin: invoices, credit notes, payments, the ledger, partner agreements,
settlement statements and payouts.

Nothing here edits money by ``save()``: every action calls a service (which validates,
writes, and audits who did it in ``accounts.AuditEvent``) and is logged in the admin's
own history (``LogEntry``). Invoices, credit notes and the journal are read-only (the
database refuses edits to finalized invoices and journal rows anyway); agreements are
added, never changed: a new share is a new agreement that supersedes the current one.
The ``Finance`` group (migration ``0004_finance_group``) holds exactly the permissions
these pages and actions check; staff need MFA (``accounts.security``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from accounts.admin_widgets import IdAutocompleteMixin
from accounts.requests import request_actor
from billing import closing, credit_notes, finance, stripe_gateway
from billing.models import (
    Attribution,
    BillingCustomer,
    ConnectAccount,
    CreditNote,
    DraftFailure,
    Invoice,
    InvoiceLine,
    JournalEntry,
    JournalLine,
    PartnerAgreement,
    PaymentAttempt,
    Payout,
    PayoutStatus,
    ReconcileRun,
    SettlementStatement,
    StatementAdjustment,
    StripeEvent,
)
from billing.periods import parse_month
from billing.settlement import agreements, payouts, statements
from contracts.admin_money import MoneyColumnsMixin


class ReadOnlyAdmin(MoneyColumnsMixin, admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def _has(request: HttpRequest, codename: str) -> bool:
    return request_actor(request).has_perm(f"billing.{codename}")


def _run_each(
    admin_site: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    action: Callable[[Any], object],
    done_message: str,
) -> None:
    """Call ``action`` for each selected object; report and log each outcome."""
    done = 0
    for obj in queryset:
        try:
            action(obj)
        except ValidationError as error:
            admin_site.message_user(request, f"{obj}: {' '.join(error.messages)}", messages.ERROR)
        except stripe_gateway.StripeGatewayError as error:
            admin_site.message_user(request, f"{obj}: Stripe: {error}", messages.ERROR)
        else:
            done += 1
            admin_site.log_change(request, obj, f"{done_message} (admin action)")
    if done:
        admin_site.message_user(request, f"{done_message}: {done}.", messages.SUCCESS)


# -- invoices, credit notes, payments -----------------------------------------------------


def _close_summary(result: closing.CloseResult) -> str:
    drafted = result.drafted
    summary = (
        f"Closed {result.month:%Y-%m}: drafts created {drafted.created}, updated "
        f"{drafted.updated}, unchanged {drafted.unchanged}, already final "
        f"{drafted.finalized_untouched}."
    )
    if drafted.failed:
        summary += (
            f" Could not draft {len(drafted.failed)} contracts: see Draft failures; they are"
            " not finalized until their draft succeeds."
        )
    if result.finalize_waiting_until is not None:
        return (
            f"{summary} Finalization waits for the grace window: from "
            f"{result.finalize_waiting_until:%Y-%m-%d %H:%M} UTC."
        )
    summary += (
        f" Finalized {result.finalized}; charged {result.charged}, failed "
        f"{result.charge_failures}, deferred {result.charge_deferred}."
    )
    if result.statements is not None:
        summary += f" Statements created {result.statements.created}."
    return summary


class InvoiceLineInline(MoneyColumnsMixin, admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = (
        "position",
        "kind",
        "description",
        "service_month",
        "quantity",
        "unit",
        "unit_price",
        "amount_minor",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ClosePeriodForm(forms.Form):
    month = forms.CharField(
        max_length=7, help_text="Calendar month, YYYY-MM (UTC). Running it again changes nothing."
    )
    confirm = forms.BooleanField(
        label="Draft, finalize and charge this month's invoices and draft the statements"
    )

    def clean_month(self) -> date:
        try:
            return parse_month(self.cleaned_data["month"])
        except ValueError:
            raise ValidationError("Enter a month as YYYY-MM, e.g. 2026-10.") from None


class CreditForm(forms.Form):
    amount = forms.DecimalField(
        min_value=Decimal("0.01"), decimal_places=2, help_text="In the invoice's currency."
    )
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))
    # Minted per render: submitting this form twice issues one credit note per invoice.
    submission_key = forms.CharField(max_length=64, required=False, widget=forms.HiddenInput)


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = (
        "__str__",
        "buyer",
        "month",
        "status",
        "payment_status",
        "total_minor",
        "amount_due",
        "currency",
    )
    list_filter = ("status", "payment_status", "month", "currency")
    search_fields = ("number", "buyer__name", "buyer__slug")
    list_select_related = ("buyer",)
    date_hierarchy = "finalized_at"
    inlines = [InvoiceLineInline]
    actions = ["finalize", "void", "credit", "retry_payment"]

    def get_urls(self) -> list[URLPattern]:
        close = path(
            "close-period/",
            self.admin_site.admin_view(self.close_period_view),
            name="billing_invoice_close_period",
        )
        return [close, *super().get_urls()]

    def close_period_view(self, request: HttpRequest) -> HttpResponse:
        """Close a month as ``manage.py close_period`` does, after an explicit confirmation."""
        if not self.has_finalize_permission(request):
            raise PermissionDenied
        form = ClosePeriodForm(request.POST or None)
        if form.is_valid():
            month = form.cleaned_data["month"]
            try:
                result = closing.close_period(month=month)
            except ValidationError as error:
                form.add_error("month", " ".join(error.messages))
            else:
                self.message_user(request, _close_summary(result), messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:billing_invoice_changelist"))
        return TemplateResponse(
            request,
            "admin/billing/invoice/close_period.html",
            {
                **self.admin_site.each_context(request),
                "title": "Close a month",
                "form": form,
                "opts": self.model._meta,
            },
        )

    @admin.display(description="Due (minor units)")
    def amount_due(self, invoice: Invoice) -> int:
        return invoice.amount_due_minor if invoice.is_finalized else 0

    def has_finalize_permission(self, request: HttpRequest) -> bool:
        return _has(request, "finalize_invoice")

    def has_void_permission(self, request: HttpRequest) -> bool:
        return _has(request, "void_invoice")

    def has_credit_permission(self, request: HttpRequest) -> bool:
        return _has(request, "add_creditnote")

    def has_retry_payment_permission(self, request: HttpRequest) -> bool:
        return _has(request, "retry_payment_invoice")

    @admin.action(description="Finalize the selected drafts", permissions=["finalize"])
    def finalize(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        _run_each(
            self,
            request,
            queryset.select_related("buyer"),
            lambda invoice: finance.invoice_finalize(invoice=invoice, actor=request_actor(request)),
            "Finalized",
        )

    @admin.action(description="Void (credit everything left)", permissions=["void"])
    def void(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        _run_each(
            self,
            request,
            queryset.select_related("buyer"),
            lambda invoice: finance.invoice_void(
                invoice=invoice, actor=request_actor(request), reason="Voided by finance"
            ),
            "Voided",
        )

    @admin.action(description="Issue a credit note", permissions=["credit"])
    def credit(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> HttpResponse | None:
        if "apply" in request.POST:
            form = CreditForm(request.POST)
        else:
            form = CreditForm(initial={"submission_key": secrets.token_urlsafe(24)})
        if form.is_bound and form.is_valid():
            try:
                amount_minor = int(form.cleaned_data["amount"] * 100)
            except InvalidOperation:  # pragma: no cover (the form validated it)
                amount_minor = 0
            _run_each(
                self,
                request,
                queryset.select_related("buyer"),
                lambda invoice: credit_notes.credit_note_issue(
                    invoice=invoice,
                    amount_minor=amount_minor,
                    reason=form.cleaned_data["reason"],
                    actor=request_actor(request),
                    submission_key=form.cleaned_data["submission_key"],
                ),
                "Credited",
            )
            return None
        return TemplateResponse(
            request,
            "admin/billing/invoice/credit.html",
            {
                **self.admin_site.each_context(request),
                "title": "Issue a credit note",
                "form": form,
                "invoices": queryset,
                "opts": self.model._meta,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )

    @admin.action(description="Retry the payment now", permissions=["retry_payment"])
    def retry_payment(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        _run_each(
            self,
            request,
            queryset.select_related("buyer"),
            lambda invoice: finance.invoice_retry_payment(
                invoice=invoice, actor=request_actor(request)
            ),
            "Payment retried",
        )


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ("number", "invoice", "amount_minor", "currency", "refund_status", "created_at")
    list_filter = ("refund_status", "currency")
    list_select_related = ("invoice",)
    search_fields = ("number", "invoice__number", "invoice__buyer__name")
    date_hierarchy = "created_at"


@admin.register(PaymentAttempt)
class PaymentAttemptAdmin(ReadOnlyAdmin):
    list_display = (
        "invoice",
        "attempt_number",
        "status",
        "amount_minor",
        "fee_minor",
        "currency",
        "off_session",
        "created_at",
    )
    list_filter = ("status", "off_session", "currency")
    search_fields = ("invoice__number", "stripe_payment_intent_id", "stripe_charge_id")
    list_select_related = ("invoice",)


@admin.register(BillingCustomer)
class BillingCustomerAdmin(ReadOnlyAdmin):
    list_display = ("organization", "stripe_customer_id", "card_brand", "card_last4")
    search_fields = ("organization__name", "stripe_customer_id")
    list_select_related = ("organization",)


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "type", "object_id", "received_at")
    list_filter = ("type",)
    search_fields = ("event_id", "object_id")


# -- the ledger (read-only) ------------------------------------------------------------------


class JournalLineInline(MoneyColumnsMixin, admin.TabularInline):
    model = JournalLine
    extra = 0
    can_delete = False
    readonly_fields = ("account", "currency", "amount_minor", "organization")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ("pk", "kind", "memo", "occurred_at")
    list_filter = ("kind",)
    search_fields = ("key", "memo")
    date_hierarchy = "occurred_at"
    inlines = [JournalLineInline]


@admin.register(JournalLine)
class JournalLineAdmin(ReadOnlyAdmin):
    list_display = ("entry", "account", "currency", "amount_minor", "organization")
    list_filter = ("account", "currency", "entry__kind")
    search_fields = ("entry__key", "entry__memo", "organization__name")
    list_select_related = ("entry", "organization")


# -- settlement ------------------------------------------------------------------------------


class AgreementForm(forms.ModelForm):
    class Meta:
        model = PartnerAgreement
        fields = ["partner", "line_kind", "partner_share", "effective_from", "note"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        partner, kind, start = (
            data.get("partner"),
            data.get("line_kind"),
            data.get("effective_from"),
        )
        if start is not None and start.day != 1:
            self.add_error("effective_from", "Agreements start on the first day of a month.")
        if partner is not None and kind and start is not None:
            clash = PartnerAgreement.objects.filter(partner=partner, line_kind=kind).filter(
                Q(effective_from__gte=start) | Q(effective_until__gt=start)
            )
            if clash.exists():
                self.add_error(
                    "effective_from",
                    "Another agreement for this kind starts or runs after this date.",
                )
        return data


@admin.register(PartnerAgreement)
class PartnerAgreementAdmin(IdAutocompleteMixin, admin.ModelAdmin):
    form = AgreementForm
    list_display = (
        "partner",
        "line_kind",
        "partner_share",
        "effective_from",
        "effective_until",
        "created_by",
    )
    list_filter = ("line_kind", "effective_from")
    search_fields = ("partner__name", "partner__slug")
    list_select_related = ("partner", "created_by")
    autocomplete_fields = ["partner"]

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: PartnerAgreement, form: forms.ModelForm, change: bool
    ) -> None:
        created = agreements.agreement_create(
            partner=obj.partner,
            line_kind=obj.line_kind,
            partner_share=obj.partner_share,
            effective_from=obj.effective_from,
            note=obj.note,
            actor=request_actor(request),
        )
        obj.pk = created.pk
        obj.created_at = created.created_at


class StatementAdjustmentInline(MoneyColumnsMixin, admin.TabularInline):
    model = StatementAdjustment
    extra = 0
    can_delete = False
    fields = ("credit_note", "reason", "amount_minor", "partner_share_minor", "platform_fee_minor")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(SettlementStatement)
class SettlementStatementAdmin(ReadOnlyAdmin):
    list_display = (
        "reference",
        "partner",
        "month",
        "currency",
        "status",
        "earnings_minor",
        "adjustments_minor",
        "carried_in_minor",
        "payout_minor",
        "carried_out_minor",
    )
    list_filter = ("status", "month", "currency")
    search_fields = ("partner__name", "partner__slug")
    list_select_related = ("partner",)
    inlines = [StatementAdjustmentInline]
    actions = ["approve", "pay"]

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return _has(request, "approve_settlementstatement")

    def has_pay_permission(self, request: HttpRequest) -> bool:
        return _has(request, "pay_settlementstatement")

    @admin.action(description="Approve the selected statements", permissions=["approve"])
    def approve(self, request: HttpRequest, queryset: QuerySet[SettlementStatement]) -> None:
        _run_each(
            self,
            request,
            queryset.select_related("partner").order_by("month", "pk"),
            lambda statement: statements.statement_approve(
                statement=statement,
                actor=request_actor(request),
            ),
            "Approved",
        )

    @admin.action(description="Pay out (Stripe Connect transfer)", permissions=["pay"])
    def pay(self, request: HttpRequest, queryset: QuerySet[SettlementStatement]) -> None:
        def pay_one(statement: SettlementStatement) -> None:
            payout = payouts.statement_pay(statement=statement, actor=request_actor(request))
            if payout is not None and payout.status == PayoutStatus.FAILED:
                raise ValidationError(f"Stripe refused the transfer: {payout.failure_message}")

        _run_each(self, request, queryset.select_related("partner"), pay_one, "Paid")


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin):
    list_display = (
        "statement",
        "partner",
        "amount_minor",
        "currency",
        "status",
        "attempt_number",
        "stripe_transfer_id",
        "paid_at",
    )
    list_filter = ("status", "currency")
    search_fields = ("partner__name", "stripe_transfer_id", "idempotency_key")
    list_select_related = ("statement", "partner")
    actions = ["retry"]

    def has_pay_permission(self, request: HttpRequest) -> bool:
        return _has(request, "pay_settlementstatement")

    @admin.action(description="Retry the selected payouts", permissions=["pay"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Payout]) -> None:
        _run_each(
            self,
            request,
            queryset.select_related("statement"),
            lambda payout: payouts.statement_pay(
                statement=payout.statement,
                actor=request_actor(request),
            ),
            "Payout retried",
        )


@admin.register(DraftFailure)
class DraftFailureAdmin(ReadOnlyAdmin):
    """Contracts the period close could not draft, and why: finance fixes the data and
    closes again (a successful draft removes the row)."""

    list_display = ("contract", "month", "error", "attempts", "failed_at")
    list_filter = ("month",)
    search_fields = ("contract__buyer__name", "error")
    list_select_related = ("contract",)


@admin.register(Attribution)
class AttributionAdmin(ReadOnlyAdmin):
    list_display = (
        "invoice",
        "invoice_line",
        "partner",
        "node",
        "revenue_kind",
        "amount_minor",
        "partner_share_minor",
        "platform_fee_minor",
        "statement",
    )
    list_filter = ("revenue_kind", "service_month", "currency")
    search_fields = ("invoice__number", "partner__name", "node__name")
    list_select_related = ("invoice", "invoice_line", "partner", "node", "statement")


@admin.register(ConnectAccount)
class ConnectAccountAdmin(ReadOnlyAdmin):
    list_display = (
        "partner",
        "stripe_account_id",
        "details_submitted",
        "payouts_enabled",
        "transfers_active",
        "updated_at",
    )
    list_filter = ("transfers_active", "details_submitted")
    search_fields = ("partner__name", "stripe_account_id")
    list_select_related = ("partner",)


@admin.register(ReconcileRun)
class ReconcileRunAdmin(ReadOnlyAdmin):
    """The kept reports; runs start from the finance overview (``/admin/finance/``)."""

    list_display = ("month", "status", "difference_count", "requested_by", "created_at")
    list_filter = ("status", "month")
    list_select_related = ("requested_by",)
    readonly_fields = (
        "month",
        "include_stripe",
        "status",
        "steps_done",
        "steps_total",
        "difference_count",
        "report",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
    )
