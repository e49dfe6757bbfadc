"""Dunning: retries after 3, 5 and 7 days with an email each time, then suspension;
payment resumes the contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from billing import dunning, payments
from billing.models import BillingCustomer, PaymentAttempt, PaymentStatus
from contracts.models import ContractState
from tests.billing.conftest import finalized_invoice_for, save_card

pytestmark = pytest.mark.django_db
START = datetime(2026, 11, 4, 6, tzinfo=UTC)


def test_retries_then_suspends_then_payment_resumes(
    buyer_org, buyer_owner, localstripe, mailoutbox, django_capture_on_commit_callbacks
):
    save_card(buyer_org, localstripe, number="4000000000000341")
    invoice = finalized_invoice_for(buyer_org)
    contract = invoice.contract
    moments = []
    with django_capture_on_commit_callbacks(execute=True):
        with time_machine.travel(START, tick=False):
            payments.charge_invoice(invoice_id=invoice.pk)
        now = START
        for days in (3, 5, 7):
            invoice.refresh_from_db()
            assert invoice.next_payment_attempt_at == now + timedelta(days=days)
            # Nothing is retried before it is due.
            with time_machine.travel(now + timedelta(days=days) - timedelta(minutes=1), tick=False):
                assert dunning.run_due_retries() == 0
            now += timedelta(days=days)
            with time_machine.travel(now, tick=False):
                assert dunning.run_due_retries() == 1
            moments.append(now)
    invoice.refresh_from_db()
    contract.refresh_from_db()
    assert PaymentAttempt.objects.filter(invoice=invoice).count() == 4
    assert invoice.payment_status == PaymentStatus.OVERDUE
    assert invoice.next_payment_attempt_at is None
    assert contract.state == ContractState.SUSPENDED
    assert invoice.number in contract.suspension_reason
    subjects = [m.subject for m in mailoutbox]
    assert subjects.count(f"[Hashgrid] Payment failed for invoice {invoice.number}") == 3
    assert subjects[-1] == f"[Hashgrid] Contract suspended: invoice {invoice.number} is unpaid"
    with time_machine.travel(now + timedelta(days=30), tick=False):
        assert dunning.run_due_retries() == 0  # the schedule is over
    # The buyer saves a working card and pays from the invoice page: the contract resumes.
    save_card(buyer_org, localstripe)
    invoice.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        attempt = payments.pay_now(invoice=invoice)
    assert attempt.status == "succeeded"
    invoice.refresh_from_db()
    contract.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.PAID
    assert contract.state == ContractState.ACTIVE


def test_a_request_stripe_refuses_fails_its_attempt_and_the_other_retries_still_run(
    buyer_org, other_org, localstripe
):
    """A card removed at Stripe makes Stripe refuse the charge request itself (no
    PaymentIntent): that attempt fails and is rescheduled, and the next invoice due in the
    same run is still charged."""
    save_card(buyer_org, localstripe, number="4000000000000341")  # declines
    save_card(other_org, localstripe, number="4000000000000341")
    gone = finalized_invoice_for(buyer_org, total_minor=4_400)
    paid = finalized_invoice_for(other_org, total_minor=5_500)
    with time_machine.travel(START, tick=False):
        for invoice in (gone, paid):
            assert payments.charge_invoice(invoice_id=invoice.pk).status == "failed"
    # Before the retry: the first buyer's card no longer exists at Stripe; the second
    # buyer saves a card that works.
    BillingCustomer.objects.filter(organization=buyer_org).update(
        default_payment_method_id="pm_removed_at_stripe"
    )
    save_card(other_org, localstripe)
    retry_at = START + timedelta(days=3)

    with time_machine.travel(retry_at, tick=False):
        assert dunning.run_due_retries() == 2

    refused = PaymentAttempt.objects.get(invoice=gone, attempt_number=2)
    # localstripe's 404 carries no error code (Stripe's says "resource_missing"): ours
    # records the refusal under its own.
    assert (refused.status, refused.failure_code, refused.stripe_payment_intent_id) == (
        "failed",
        "request_rejected",
        None,
    )
    gone.refresh_from_db()
    assert (gone.payment_status, gone.amount_paid_minor, gone.next_payment_attempt_at) == (
        PaymentStatus.FAILED,
        0,
        retry_at + timedelta(days=5),
    )
    charged = PaymentAttempt.objects.get(invoice=paid, attempt_number=2)
    assert (charged.status, charged.amount_minor) == ("succeeded", 5_500)
    paid.refresh_from_db()
    assert (paid.payment_status, paid.amount_paid_minor, paid.amount_due_minor) == (
        PaymentStatus.PAID,
        5_500,
        0,
    )
