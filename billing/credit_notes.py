"""Credit notes against finalized invoices, and the refunds they cause.

A finalized invoice is never edited: money given back is a numbered credit note
(CN-YYYY-NNNNNN). On an unpaid invoice it lowers what is due; on a paid one the part the
buyer overpaid is refunded to the card, with an idempotency key from the credit note, so
a retried refund never pays out twice.
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit
from accounts.models import User
from billing import enqueue, ledger, payments, stripe_gateway
from billing.models import (
    AttemptStatus,
    CreditNote,
    Invoice,
    PaymentAttempt,
    PaymentStatus,
    RefundStatus,
)
from billing.numbering import CREDIT_NOTE_SERIES, issue_numbers


@transaction.atomic
def credit_note_issue(
    *,
    invoice: Invoice,
    amount_minor: int,
    reason: str,
    actor: User | None,
    submission_key: str = "",
    now: datetime | None = None,
) -> CreditNote:
    """Credit ``amount_minor`` on a finalized invoice (at most what is not credited yet).

    ``submission_key``: the issuing form's key. A second submission of the same form waits
    for the invoice lock, then gets the credit note the first issued (unique per invoice
    and key in the database too).
    """
    now = now or timezone.now()
    locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if submission_key:
        issued = CreditNote.objects.filter(invoice=locked, submission_key=submission_key).first()
        if issued is not None:
            return issued
    if not locked.is_finalized:
        raise ValidationError("Only a finalized invoice can be credited.", code="not_finalized")
    if amount_minor <= 0:
        raise ValidationError({"amount_minor": "A credit note is for a positive amount."})
    creditable = locked.total_minor - locked.amount_credited_minor
    if amount_minor > creditable:
        raise ValidationError(
            {"amount_minor": f"At most {creditable} minor units are left to credit."},
            code="over_credit",
        )
    if not reason.strip():
        raise ValidationError({"reason": "Say why the invoice is credited."})
    owed_after = locked.total_minor - locked.amount_credited_minor - amount_minor
    net_paid = locked.amount_paid_minor - locked.amount_refunded_minor
    refund_minor = min(amount_minor, max(0, net_paid - owed_after))
    (number,) = issue_numbers(series=CREDIT_NOTE_SERIES, year=now.year, count=1)
    credit_note = CreditNote.objects.create(
        invoice=locked,
        number=number,
        amount_minor=amount_minor,
        currency=locked.currency,
        reason=reason.strip(),
        created_by=actor if actor is not None and actor.is_authenticated else None,
        created_at=now,
        refund_status=RefundStatus.PENDING if refund_minor else RefundStatus.NONE,
        refund_amount_minor=refund_minor,
        submission_key=submission_key,
    )
    changes: dict[str, object] = {
        "amount_credited_minor": locked.amount_credited_minor + amount_minor,
        "updated_at": now,
    }
    if owed_after - net_paid <= 0 and locked.payment_status != PaymentStatus.PAID:
        changes.update(
            payment_status=PaymentStatus.PAID if net_paid else PaymentStatus.NOTHING_DUE,
            next_payment_attempt_at=None,
        )
    Invoice.objects.filter(pk=locked.pk).update(**changes)
    ledger.record_credit_note(credit_note=credit_note)
    if "payment_status" in changes:
        payments.resume_if_settled(contract_id=locked.contract_id)
    audit(
        action="billing.credit_note_issued",
        actor=actor,
        organization=locked.buyer,
        target=credit_note,
        invoice=locked.number,
        amount_minor=amount_minor,
        refund_minor=refund_minor,
    )
    if refund_minor:
        enqueue.refund_credit_note_on_commit(credit_note.pk)
    return credit_note


def refund_idempotency_key(credit_note: CreditNote) -> str:
    return f"credit-note-{credit_note.pk}-refund"


def refund_credit_note(*, credit_note_id: int, now: datetime | None = None) -> CreditNote:
    """Pay a credit note's refund back to the card. ``StripeUnavailable`` → retry later
    (same idempotency key)."""
    now = now or timezone.now()
    credit_note = CreditNote.objects.select_related("invoice").get(pk=credit_note_id)
    if credit_note.refund_status != RefundStatus.PENDING:
        return credit_note
    paid = (
        PaymentAttempt.objects.filter(
            invoice_id=credit_note.invoice_id, status=AttemptStatus.SUCCEEDED
        )
        .order_by("-attempt_number")
        .first()
    )
    if paid is None or not paid.stripe_payment_intent_id:
        raise ValidationError("The invoice has no card payment to refund.", code="no_payment")
    refund = stripe_gateway.create_refund(
        payment_intent_id=paid.stripe_payment_intent_id,
        amount_minor=credit_note.refund_amount_minor,
        idempotency_key=refund_idempotency_key(credit_note),
        metadata={"credit_note_id": str(credit_note.pk), "invoice_id": str(credit_note.invoice_id)},
    )
    return apply_refund(refund=refund, now=now) or credit_note


@transaction.atomic
def apply_refund(
    *, refund: stripe_gateway.RefundView, now: datetime | None = None
) -> CreditNote | None:
    """Record a refund as Stripe says it is now; idempotent (a pending note moves once)."""
    now = now or timezone.now()
    credit_note_id = refund.metadata.get("credit_note_id", "")
    if not credit_note_id.isdigit():
        return None
    credit_note = CreditNote.objects.select_for_update().filter(pk=int(credit_note_id)).first()
    if credit_note is None or credit_note.refund_status != RefundStatus.PENDING:
        return credit_note
    if refund.status == "succeeded":
        CreditNote.objects.filter(pk=credit_note.pk).update(
            refund_status=RefundStatus.SUCCEEDED, stripe_refund_id=refund.id, refunded_at=now
        )
        invoice = Invoice.objects.select_for_update().get(pk=credit_note.invoice_id)
        Invoice.objects.filter(pk=invoice.pk).update(
            amount_refunded_minor=invoice.amount_refunded_minor + credit_note.refund_amount_minor,
            updated_at=now,
        )
        ledger.record_refund(
            credit_note=credit_note,
            refund_id=refund.id,
            amount_minor=credit_note.refund_amount_minor,
            occurred_at=now,
        )
    elif refund.status in ("failed", "canceled"):
        CreditNote.objects.filter(pk=credit_note.pk).update(
            refund_status=RefundStatus.FAILED, stripe_refund_id=refund.id
        )
    else:
        CreditNote.objects.filter(pk=credit_note.pk).update(stripe_refund_id=refund.id)
    credit_note.refresh_from_db()
    return credit_note


def sync_refund(*, refund_id: str) -> CreditNote | None:
    return apply_refund(refund=stripe_gateway.retrieve_refund(refund_id))
