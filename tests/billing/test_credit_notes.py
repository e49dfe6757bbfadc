"""Credit notes against finalized invoices; refunds when the invoice was paid."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from billing import credit_notes, ledger, payments
from billing.models import Account, CreditNote, PaymentStatus, RefundStatus
from tests.billing.conftest import finalized_invoice_for, save_card

pytestmark = pytest.mark.django_db


def test_credit_on_an_unpaid_invoice_lowers_what_is_charged(buyer_org, buyer_owner, localstripe):
    customer = save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org, total_minor=10_000)
    note = credit_notes.credit_note_issue(
        invoice=invoice, amount_minor=2_500, reason="Goodwill", actor=buyer_owner
    )
    assert note.number.startswith("CN-") and note.number.endswith("-000001")
    assert note.refund_status == RefundStatus.NONE
    invoice.refresh_from_db()
    assert (invoice.total_minor, invoice.amount_due_minor) == (10_000, 7_500)
    payments.charge_invoice(invoice_id=invoice.pk)
    assert [i["amount"] for i in localstripe.payment_intents_of(customer.stripe_customer_id)] == [
        7_500
    ]
    invoice.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.PAID
    balances = ledger.account_balances()
    assert balances[(Account.RECEIVABLE, "USD")] == 0
    assert balances[(Account.CREDIT_NOTES, "USD")] == 2_500


def test_credit_on_a_paid_invoice_is_refunded_once(
    buyer_org, buyer_owner, localstripe, django_capture_on_commit_callbacks
):
    save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org, total_minor=10_000)
    attempt = payments.charge_invoice(invoice_id=invoice.pk)
    invoice.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        note = credit_notes.credit_note_issue(
            invoice=invoice, amount_minor=3_000, reason="SLA goodwill", actor=None
        )
    assert len(callbacks) == 1  # the refund task, on commit
    assert (note.refund_status, note.refund_amount_minor) == (RefundStatus.PENDING, 3_000)
    credit_notes.refund_credit_note(credit_note_id=note.pk)
    credit_notes.refund_credit_note(credit_note_id=note.pk)  # a retried task: no second refund
    note.refresh_from_db()
    assert note.refund_status == RefundStatus.SUCCEEDED
    refunds = localstripe.get("/v1/refunds", payment_intent=attempt.stripe_payment_intent_id)[
        "data"
    ]
    assert [r["amount"] for r in refunds] == [3_000]
    invoice.refresh_from_db()
    assert (invoice.amount_refunded_minor, invoice.amount_due_minor) == (3_000, 0)
    balances = ledger.account_balances()
    assert balances[(Account.RECEIVABLE, "USD")] == 0
    assert balances[(Account.STRIPE_BALANCE, "USD")] == 7_000


def test_cannot_credit_more_than_the_invoice_or_a_draft(buyer_org):
    invoice = finalized_invoice_for(buyer_org, total_minor=1_000)
    credit_notes.credit_note_issue(invoice=invoice, amount_minor=600, reason="a", actor=None)
    with pytest.raises(ValidationError):
        credit_notes.credit_note_issue(invoice=invoice, amount_minor=401, reason="b", actor=None)
    assert CreditNote.objects.count() == 1
    credit_notes.credit_note_issue(invoice=invoice, amount_minor=400, reason="c", actor=None)
    invoice.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.NOTHING_DUE


def test_credit_note_is_immutable_but_for_its_refund(buyer_org):
    from django.db import IntegrityError, transaction

    invoice = finalized_invoice_for(buyer_org, total_minor=1_000)
    note = credit_notes.credit_note_issue(invoice=invoice, amount_minor=100, reason="a", actor=None)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditNote.objects.filter(pk=note.pk).update(amount_minor=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditNote.objects.filter(pk=note.pk).delete()
