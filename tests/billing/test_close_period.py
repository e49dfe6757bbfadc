"""manage.py close_period YYYY-MM: progress, grace window, charges, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

from billing import dunning
from billing.dunning import UNAVAILABLE_RETRY_DELAY
from billing.models import Invoice, PaymentAttempt, PaymentStatus
from tests.billing.conftest import save_card
from tests.factories import ContractFactory

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = StringIO()
    call_command("close_period", *args, stdout=out)
    return out.getvalue()


def test_close_period_drafts_finalizes_charges_and_second_run_changes_nothing(
    buyer_org, localstripe
):
    save_card(buyer_org, localstripe)
    contract = ContractFactory(
        buyer=buyer_org,
        starts_at=datetime(2026, 9, 1, tzinfo=UTC),
        activated_at=datetime(2026, 9, 1, tzinfo=UTC),
        monthly_commitment_minor=25_000,
    )
    with time_machine.travel(datetime(2026, 11, 1, 2, tzinfo=UTC), tick=False):
        output = _run("2026-10")
    assert "drafted: 1/1" in output
    assert "finalization waits for the grace window: from 2026-11-04 00:00 UTC" in output
    assert Invoice.objects.get(contract=contract).status == "draft"
    with time_machine.travel(datetime(2026, 11, 4, 1, tzinfo=UTC), tick=False):
        output = _run("2026-10")
        assert "finalized: 1/1" in output and "charged: 1/1" in output
        invoice = Invoice.objects.get(contract=contract)
        assert (invoice.number, invoice.payment_status) == ("HG-2026-000001", PaymentStatus.PAID)
        again = _run("2026-10")
    assert "drafts created 0, updated 0, unchanged 0, already final 1" in again
    assert "finalized 0; charged 0" in again
    assert PaymentAttempt.objects.count() == 1
    assert len(localstripe.payment_intents_of(buyer_org.billing_customer.stripe_customer_id)) == 1


def test_bad_month_and_unfinished_month(buyer_org):
    with pytest.raises(CommandError, match="YYYY-MM"):
        _run("October")
    with (
        time_machine.travel(datetime(2026, 10, 20, tzinfo=UTC), tick=False),
        pytest.raises(CommandError, match="has not ended"),
    ):
        _run("2026-10")


def test_a_first_charge_stripe_does_not_answer_is_sent_again_by_dunning(
    buyer_org, localstripe, stripe_proxy, settings
):
    save_card(buyer_org, localstripe)
    contract = ContractFactory(
        buyer=buyer_org,
        starts_at=datetime(2026, 9, 1, tzinfo=UTC),
        activated_at=datetime(2026, 9, 1, tzinfo=UTC),
        monthly_commitment_minor=25_000,
    )
    closing_at = datetime(2026, 11, 4, 1, tzinfo=UTC)
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    with time_machine.travel(closing_at, tick=False):
        output = _run("2026-10")
    assert "charged 0, failed 0, left pending for dunning to send again 1" in output
    invoice = Invoice.objects.get(contract=contract)
    assert (invoice.payment_status, invoice.next_payment_attempt_at) == (
        PaymentStatus.UNPAID,
        closing_at + UNAVAILABLE_RETRY_DELAY,
    )
    assert list(PaymentAttempt.objects.values_list("attempt_number", "status")) == [(1, "pending")]

    settings.STRIPE_API_BASE = stripe_proxy.url  # Stripe is back
    with time_machine.travel(closing_at + UNAVAILABLE_RETRY_DELAY, tick=False):
        assert dunning.run_due_retries() == 1

    invoice.refresh_from_db()
    assert (invoice.payment_status, invoice.amount_paid_minor, invoice.amount_due_minor) == (
        PaymentStatus.PAID,
        25_000,
        0,
    )
    assert list(PaymentAttempt.objects.values_list("attempt_number", "status")) == [
        (1, "succeeded")
    ]
    intents = localstripe.payment_intents_of(buyer_org.billing_customer.stripe_customer_id)
    assert [(i["amount"], i["status"]) for i in intents] == [(25_000, "succeeded")]


def test_a_request_stripe_finds_wrong_is_not_the_buyers_decline(
    buyer_org, localstripe, stripe_proxy, mailoutbox
):
    """Stripe refusing our request itself (here: an amount below its minimum) is not a
    failed payment: no dunning count, no "payment failed" email; the attempt stays pending
    and is sent again later, and the error is logged for operators."""
    save_card(buyer_org, localstripe)
    contract = ContractFactory(
        buyer=buyer_org,
        starts_at=datetime(2026, 9, 1, tzinfo=UTC),
        activated_at=datetime(2026, 9, 1, tzinfo=UTC),
        monthly_commitment_minor=40,
    )
    stripe_proxy.behaviour.refuse_next["/v1/payment_intents"] = (
        400,
        {
            "type": "invalid_request_error",
            "code": "amount_too_small",
            "param": "amount",
            "message": "Amount must be at least $0.50 usd",
        },
    )
    closing_at = datetime(2026, 11, 4, 1, tzinfo=UTC)
    with time_machine.travel(closing_at, tick=False):
        output = _run("2026-10")

    assert "charged 0, failed 0, left pending for dunning to send again 1" in output
    invoice = Invoice.objects.get(contract=contract)
    assert (
        invoice.payment_status,
        invoice.payment_attempt_count,
        invoice.next_payment_attempt_at,
    ) == (PaymentStatus.UNPAID, 1, closing_at + UNAVAILABLE_RETRY_DELAY)
    assert list(PaymentAttempt.objects.values_list("status", "failure_code")) == [("pending", "")]
    assert mailoutbox == []
    assert localstripe.payment_intents_of(buyer_org.billing_customer.stripe_customer_id) == []
