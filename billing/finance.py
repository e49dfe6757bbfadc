"""What finance does to invoices from the admin: finalize, void, retry a payment.

Each validates, calls the billing service that does the work, and writes the audit trail
(credit notes audit themselves in ``credit_notes.credit_note_issue``). The admin calls
these, never ``save()``.
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.audit import audit
from accounts.models import User
from billing import credit_notes, invoices, payments
from billing.models import CreditNote, Invoice, InvoiceStatus, PaymentAttempt


def invoice_finalize(
    *, invoice: Invoice, actor: User | None, now: datetime | None = None
) -> Invoice:
    """Finalize one draft (after the month's grace window, as the period close would)."""
    now = now or timezone.now()
    if invoice.status != InvoiceStatus.DRAFT:
        raise ValidationError(f"Invoice {invoice} is already finalized.", code="not_draft")
    result = invoices.finalize_invoices(
        month=invoice.month, contract_ids=[invoice.contract_id], now=now
    )
    invoice.refresh_from_db()
    audit(
        action="billing.invoice_finalized",
        actor=actor,
        organization=invoice.buyer,
        target=invoice,
        number=invoice.number,
        finalized=result.finalized,
    )
    return invoice


def invoice_void(
    *, invoice: Invoice, actor: User | None, reason: str, now: datetime | None = None
) -> CreditNote:
    """Void a finalized invoice: a credit note for everything not credited yet (what was
    paid is refunded). The invoice itself is never edited."""
    left = invoice.total_minor - invoice.amount_credited_minor
    if not invoice.is_finalized or left <= 0:
        raise ValidationError(f"Invoice {invoice} has nothing left to void.", code="nothing_left")
    note = credit_notes.credit_note_issue(
        invoice=invoice, amount_minor=left, reason=reason or "Invoice voided", actor=actor, now=now
    )
    audit(
        action="billing.invoice_voided",
        actor=actor,
        organization=invoice.buyer,
        target=invoice,
        credit_note=note.number,
        amount_minor=left,
    )
    return note


def invoice_retry_payment(
    *, invoice: Invoice, actor: User | None, now: datetime | None = None
) -> PaymentAttempt | None:
    """Charge the buyer's card now (off session, as dunning would)."""
    if not invoice.is_outstanding or invoice.amount_due_minor <= 0:
        raise ValidationError(f"Invoice {invoice} has nothing to collect.", code="nothing_due")
    attempt = payments.charge_invoice(invoice_id=invoice.pk, now=now)
    audit(
        action="billing.payment_retried",
        actor=actor,
        organization=invoice.buyer,
        target=invoice,
        attempt=attempt.attempt_number if attempt else None,
        status=attempt.status if attempt else "nothing charged",
    )
    return attempt
