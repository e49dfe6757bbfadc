"""Charging finalized invoices through localstripe: success, decline, 3-D Secure, timeouts."""

from __future__ import annotations

import httpx
import pytest

from billing import customers, dunning, ledger, payments
from billing.models import Account, AttemptStatus, PaymentAttempt, PaymentStatus
from billing.stripe_gateway import StripeUnavailable
from tests.billing.conftest import finalized_invoice_for, save_card

pytestmark = pytest.mark.django_db


def test_success_marks_paid_and_posts_payment_and_fee(
    buyer_org,
    buyer_owner,
    localstripe,
    stripe_proxy,
    mailoutbox,
    django_capture_on_commit_callbacks,
):
    customer = save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org, total_minor=12_345)
    stripe_proxy.behaviour.balance_fee_minor = 388  # what Stripe would keep: 2.9 % + 30 ¢
    with django_capture_on_commit_callbacks(execute=True):
        attempt = payments.charge_invoice(invoice_id=invoice.pk)
    invoice.refresh_from_db()
    assert attempt.status == AttemptStatus.SUCCEEDED
    assert attempt.idempotency_key == f"invoice-{invoice.pk}-attempt-1"
    assert (invoice.payment_status, invoice.amount_paid_minor, invoice.amount_due_minor) == (
        PaymentStatus.PAID,
        12_345,
        0,
    )
    intents = localstripe.payment_intents_of(customer.stripe_customer_id)
    assert [(i["amount"], i["status"], i["metadata"]["invoice_id"]) for i in intents] == [
        (12_345, "succeeded", str(invoice.pk))
    ]
    attempt.refresh_from_db()
    assert attempt.fee_minor == 388
    balances = ledger.account_balances()
    assert balances[(Account.RECEIVABLE, "USD")] == 0
    assert balances[(Account.STRIPE_BALANCE, "USD")] == 12_345 - 388
    assert balances[(Account.STRIPE_FEES, "USD")] == 388
    assert [m.subject for m in mailoutbox] == [
        f"[Hashgrid] Payment received for invoice {invoice.number}"
    ]
    # Charging again: nothing to charge.
    assert payments.charge_invoice(invoice_id=invoice.pk) is None
    assert len(localstripe.payment_intents_of(customer.stripe_customer_id)) == 1


def test_decline_is_recorded_and_dunning_starts(
    buyer_org, buyer_owner, localstripe, mailoutbox, django_capture_on_commit_callbacks
):
    customer = save_card(
        buyer_org, localstripe, number="4000000000000341"
    )  # attaches, then declines
    invoice = finalized_invoice_for(buyer_org)
    with django_capture_on_commit_callbacks(execute=True):
        attempt = payments.charge_invoice(invoice_id=invoice.pk)
    invoice.refresh_from_db()
    assert attempt.status == AttemptStatus.FAILED
    assert attempt.failure_code == "card_declined"
    assert attempt.stripe_payment_intent_id.startswith("pi_")
    assert invoice.payment_status == PaymentStatus.FAILED
    assert invoice.next_payment_attempt_at is not None
    assert ledger.receivable_of(organization=buyer_org, currency="USD") == invoice.total_minor
    assert [m.subject for m in mailoutbox] == [
        f"[Hashgrid] Payment failed for invoice {invoice.number}"
    ]
    assert (
        localstripe.payment_intents_of(customer.stripe_customer_id)[0]["status"]
        == "requires_payment_method"
    )


def test_3d_secure_requires_action_then_buyer_authenticates(
    buyer_org, buyer_owner, localstripe, mailoutbox, django_capture_on_commit_callbacks
):
    save_card(buyer_org, localstripe, number="4000002760003184")
    invoice = finalized_invoice_for(buyer_org)
    with django_capture_on_commit_callbacks(execute=True):
        attempt = payments.charge_invoice(invoice_id=invoice.pk)
    invoice.refresh_from_db()
    assert attempt.status == AttemptStatus.REQUIRES_ACTION
    assert invoice.payment_status == PaymentStatus.REQUIRES_ACTION
    assert "Authenticate the payment" in mailoutbox[0].subject
    # The buyer completes 3-D Secure with Stripe.js on the invoice page …
    secret = payments.client_secret_for(attempt=attempt)
    localstripe.authenticate_payment(
        payment_intent_id=attempt.stripe_payment_intent_id, client_secret=secret
    )
    # … and the page (or the webhook) re-reads the PaymentIntent.
    payments.sync_payment_intent(payment_intent_id=attempt.stripe_payment_intent_id)
    invoice.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.PAID
    assert invoice.next_payment_attempt_at is None


def test_a_new_attempt_cancels_the_one_still_waiting_for_3d_secure(
    buyer_org, buyer_owner, localstripe, django_capture_on_commit_callbacks
):
    customer = save_card(buyer_org, localstripe, number="4000002760003184")
    invoice = finalized_invoice_for(buyer_org)
    with django_capture_on_commit_callbacks(execute=True):
        first = payments.charge_invoice(invoice_id=invoice.pk)
        second = payments.charge_invoice(invoice_id=invoice.pk)  # a dunning retry

    first.refresh_from_db()
    assert (first.status, first.failure_code) == (AttemptStatus.FAILED, "superseded")
    assert second.status == AttemptStatus.REQUIRES_ACTION
    intents = {
        intent["id"]: intent["status"]
        for intent in localstripe.payment_intents_of(customer.stripe_customer_id)
    }
    assert intents == {
        first.stripe_payment_intent_id: "canceled",
        second.stripe_payment_intent_id: "requires_action",
    }
    # The old PaymentIntent can no longer be paid: only the new one can.
    with pytest.raises(httpx.HTTPStatusError):
        localstripe.authenticate_payment(
            payment_intent_id=first.stripe_payment_intent_id,
            client_secret=localstripe.get(f"/v1/payment_intents/{first.stripe_payment_intent_id}")[
                "client_secret"
            ],
        )


def test_timeout_is_retried_with_the_same_key_and_charges_once(
    buyer_org, buyer_owner, localstripe, stripe_proxy, settings
):
    customer = save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org, total_minor=9_900)
    settings.STRIPE_READ_TIMEOUT_SECONDS = 1
    # Stripe creates the PaymentIntent, but its answer comes too late for our client.
    stripe_proxy.behaviour.delay_first = {"/v1/payment_intents": 2.5}
    attempt = payments.charge_invoice(invoice_id=invoice.pk)
    assert attempt.status == AttemptStatus.SUCCEEDED
    creates = [
        p for m, p in stripe_proxy.behaviour.forwarded if m == "POST" and p == "/v1/payment_intents"
    ]
    assert len(creates) == 1  # the retry was answered from Stripe's idempotency store
    assert stripe_proxy.behaviour.idempotent_replays == 1
    intents = localstripe.payment_intents_of(customer.stripe_customer_id)
    assert [(i["amount"], i["status"]) for i in intents] == [(9_900, "succeeded")]
    assert len(localstripe.charges_of(customer.stripe_customer_id)) == 1


def test_stripe_unreachable_leaves_the_attempt_pending_and_the_retry_reuses_its_key(
    buyer_org, buyer_owner, localstripe, stripe_proxy, settings
):
    customer = save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org, total_minor=5_000)
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    from billing.stripe_gateway import StripeUnavailable

    with pytest.raises(StripeUnavailable):
        payments.charge_invoice(invoice_id=invoice.pk)
    pending = PaymentAttempt.objects.get(invoice=invoice)
    assert pending.status == AttemptStatus.PENDING
    settings.STRIPE_API_BASE = stripe_proxy.url  # Stripe is back
    attempt = payments.charge_invoice(invoice_id=invoice.pk)
    assert (attempt.pk, attempt.idempotency_key) == (pending.pk, f"invoice-{invoice.pk}-attempt-1")
    assert attempt.status == AttemptStatus.SUCCEEDED
    assert len(localstripe.payment_intents_of(customer.stripe_customer_id)) == 1


def test_no_card_counts_as_a_failed_attempt(buyer_org, buyer_owner):
    invoice = finalized_invoice_for(buyer_org)
    assert payments.charge_invoice(invoice_id=invoice.pk) is None
    attempt = PaymentAttempt.objects.get(invoice=invoice)
    invoice.refresh_from_db()
    assert (attempt.status, attempt.failure_code) == (AttemptStatus.FAILED, "no_payment_method")
    assert invoice.payment_status == PaymentStatus.FAILED


def _buyer_saves_another_card(*, organization, actor, localstripe, number: str) -> str:
    """The card page's flow: a SetupIntent, confirmed by Stripe.js, then saved as default."""
    setup = customers.card_setup_start(organization=organization)
    localstripe.confirm_setup_intent(
        setup_intent_id=setup.id, client_secret=setup.client_secret, card=number
    )
    customer = customers.card_setup_complete(
        organization=organization, setup_intent_id=setup.id, actor=actor
    )
    return customer.default_payment_method_id


def _lose_the_answer_to_the_first_charge(*, invoice, stripe_proxy, settings) -> PaymentAttempt:
    """Stripe makes the PaymentIntent, but its answer never reaches us: attempt 1 stays
    pending with its key, as after a crash or a timeout past the SDK's retries."""
    settings.STRIPE_READ_TIMEOUT_SECONDS = 1
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    stripe_proxy.behaviour.delay_first = {"/v1/payment_intents": 2.5}
    with pytest.raises(StripeUnavailable):
        payments.charge_invoice(invoice_id=invoice.pk)
    settings.STRIPE_READ_TIMEOUT_SECONDS = 10
    settings.STRIPE_MAX_NETWORK_RETRIES = 2
    pending = PaymentAttempt.objects.get(invoice=invoice)
    assert (pending.attempt_number, pending.status) == (1, AttemptStatus.PENDING)
    return pending


def test_pending_attempt_is_replayed_with_its_own_card_after_the_buyer_changes_card(
    buyer_org, buyer_owner, localstripe, stripe_proxy, settings
):
    customer = save_card(buyer_org, localstripe, number="4242424242424242")
    first_card = customer.default_payment_method_id
    invoice = finalized_invoice_for(buyer_org, total_minor=7_700)
    pending = _lose_the_answer_to_the_first_charge(
        invoice=invoice, stripe_proxy=stripe_proxy, settings=settings
    )
    new_card = _buyer_saves_another_card(
        organization=buyer_org,
        actor=buyer_owner,
        localstripe=localstripe,
        number="5555555555554444",
    )
    assert new_card.startswith("pm_") and new_card != first_card

    # The next charging run picks attempt 1 up: Stripe has its PaymentIntent (found by the
    # attempt id in its metadata), made with the first card; nothing is sent again.
    attempt = payments.charge_invoice(invoice_id=invoice.pk)

    assert stripe_proxy.behaviour.idempotency_conflicts == []
    assert stripe_proxy.behaviour.idempotent_replays == 0
    creates = [
        p for m, p in stripe_proxy.behaviour.forwarded if m == "POST" and p == "/v1/payment_intents"
    ]
    assert len(creates) == 1
    assert (attempt.pk, attempt.idempotency_key, attempt.status, attempt.payment_method_id) == (
        pending.pk,
        f"invoice-{invoice.pk}-attempt-1",
        AttemptStatus.SUCCEEDED,
        first_card,
    )
    intents = localstripe.payment_intents_of(customer.stripe_customer_id)
    assert [(i["amount"], i["status"], i["payment_method"]) for i in intents] == [
        (7_700, "succeeded", first_card)
    ]
    assert [
        (c["amount"], c["paid"]) for c in localstripe.charges_of(customer.stripe_customer_id)
    ] == [(7_700, True)]
    invoice.refresh_from_db()
    assert (
        invoice.payment_status,
        invoice.amount_paid_minor,
        invoice.amount_due_minor,
        invoice.payment_attempt_count,
    ) == (PaymentStatus.PAID, 7_700, 0, 1)
    assert list(
        PaymentAttempt.objects.filter(invoice=invoice).values_list(
            "attempt_number", "status", "amount_minor", "payment_method_id"
        )
    ) == [(1, AttemptStatus.SUCCEEDED, 7_700, first_card)]
    assert ledger.receivable_of(organization=buyer_org, currency="USD") == 0
    # Paid once: a further run charges nothing, on either card.
    assert payments.charge_invoice(invoice_id=invoice.pk) is None
    assert len(localstripe.payment_intents_of(customer.stripe_customer_id)) == 1


def test_a_lost_answer_replayed_after_stripe_forgot_the_key_is_found_not_charged_again(
    buyer_org, localstripe, stripe_proxy, settings
):
    customer = save_card(buyer_org, localstripe, number="4242424242424242")
    invoice = finalized_invoice_for(buyer_org, total_minor=9_900)
    pending = _lose_the_answer_to_the_first_charge(
        invoice=invoice, stripe_proxy=stripe_proxy, settings=settings
    )
    # A day passes before the next charging run: Stripe no longer knows the key, so
    # sending it again would make a second PaymentIntent and charge the card twice.
    stripe_proxy.forget_keys()

    attempt = payments.charge_invoice(invoice_id=invoice.pk)

    creates = [
        p for m, p in stripe_proxy.behaviour.forwarded if m == "POST" and p == "/v1/payment_intents"
    ]
    assert len(creates) == 1  # the first send only
    intents = localstripe.payment_intents_of(customer.stripe_customer_id)
    assert [(i["id"], i["amount"], i["status"]) for i in intents] == [
        (attempt.stripe_payment_intent_id, 9_900, "succeeded")
    ]
    assert [
        (c["amount"], c["paid"]) for c in localstripe.charges_of(customer.stripe_customer_id)
    ] == [(9_900, True)]
    assert (attempt.pk, attempt.status, attempt.amount_minor) == (
        pending.pk,
        AttemptStatus.SUCCEEDED,
        9_900,
    )
    invoice.refresh_from_db()
    assert (
        invoice.payment_status,
        invoice.amount_paid_minor,
        invoice.amount_due_minor,
        invoice.payment_attempt_count,
    ) == (PaymentStatus.PAID, 9_900, 0, 1)
    assert ledger.receivable_of(organization=buyer_org, currency="USD") == 0


def test_old_card_declines_its_own_attempt_and_the_next_attempt_charges_the_new_card(
    buyer_org, buyer_owner, localstripe, stripe_proxy, settings
):
    customer = save_card(buyer_org, localstripe, number="4000000000000341")  # declines
    first_card = customer.default_payment_method_id
    invoice = finalized_invoice_for(buyer_org, total_minor=6_600)
    _lose_the_answer_to_the_first_charge(
        invoice=invoice, stripe_proxy=stripe_proxy, settings=settings
    )
    new_card = _buyer_saves_another_card(
        organization=buyer_org,
        actor=buyer_owner,
        localstripe=localstripe,
        number="4242424242424242",
    )

    # Attempt 1 is resolved as Stripe decided it, with its own card …
    replayed = payments.charge_invoice(invoice_id=invoice.pk)
    assert (replayed.attempt_number, replayed.status, replayed.failure_code) == (
        1,
        AttemptStatus.FAILED,
        "card_declined",
    )
    invoice.refresh_from_db()
    assert (invoice.payment_status, invoice.amount_paid_minor) == (PaymentStatus.FAILED, 0)
    # … and dunning's retry is a new attempt, with a new key, on the new card.
    assert dunning.run_due_retries(now=invoice.next_payment_attempt_at) == 1

    assert stripe_proxy.behaviour.idempotency_conflicts == []
    assert list(
        PaymentAttempt.objects.filter(invoice=invoice).values_list(
            "attempt_number", "idempotency_key", "status", "amount_minor", "payment_method_id"
        )
    ) == [
        (1, f"invoice-{invoice.pk}-attempt-1", AttemptStatus.FAILED, 6_600, first_card),
        (2, f"invoice-{invoice.pk}-attempt-2", AttemptStatus.SUCCEEDED, 6_600, new_card),
    ]
    intents = sorted(
        localstripe.payment_intents_of(customer.stripe_customer_id), key=lambda i: i["created"]
    )
    assert [(i["amount"], i["status"], i["payment_method"]) for i in intents] == [
        (6_600, "requires_payment_method", first_card),
        (6_600, "succeeded", new_card),
    ]
    invoice.refresh_from_db()
    assert (invoice.payment_status, invoice.amount_paid_minor, invoice.amount_due_minor) == (
        PaymentStatus.PAID,
        6_600,
        0,
    )
    assert ledger.receivable_of(organization=buyer_org, currency="USD") == 0


def test_pending_attempt_recorded_before_cards_were_kept_takes_the_current_card_once(
    buyer_org, buyer_owner, localstripe, stripe_proxy, settings
):
    customer = save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org, total_minor=3_300)
    pending = _lose_the_answer_to_the_first_charge(
        invoice=invoice, stripe_proxy=stripe_proxy, settings=settings
    )
    PaymentAttempt.objects.filter(pk=pending.pk).update(payment_method_id="")  # an old row

    attempt = payments.charge_invoice(invoice_id=invoice.pk)

    assert (attempt.pk, attempt.status, attempt.payment_method_id) == (
        pending.pk,
        AttemptStatus.SUCCEEDED,
        customer.default_payment_method_id,
    )
    assert stripe_proxy.behaviour.idempotency_conflicts == []
    intents = localstripe.payment_intents_of(customer.stripe_customer_id)
    assert [(i["amount"], i["status"]) for i in intents] == [(3_300, "succeeded")]
    invoice.refresh_from_db()
    assert (invoice.payment_status, invoice.amount_paid_minor) == (PaymentStatus.PAID, 3_300)


def test_a_key_sent_again_with_other_parameters_is_a_conflict_not_a_refusal(
    buyer_org, localstripe, stripe_proxy
):
    """Stripe's idempotency_error means the key's first request may have charged: the
    gateway says so (``IdempotencyConflict``) instead of a refusal, which charging would
    record as a failed attempt and retry under a new key."""
    from billing import stripe_gateway

    customer = save_card(buyer_org, localstripe)
    request = {
        "customer_id": customer.stripe_customer_id,
        "payment_method_id": customer.default_payment_method_id,
        "currency": "USD",
        "idempotency_key": "test-conflict-1",
        "metadata": {"attempt_id": "0"},
        "off_session": True,
    }
    first = stripe_gateway.create_payment_intent(amount_minor=1_000, **request)
    assert (first.status, first.amount_minor) == ("succeeded", 1_000)

    with pytest.raises(stripe_gateway.IdempotencyConflict) as caught:
        stripe_gateway.create_payment_intent(amount_minor=2_000, **request)

    assert not isinstance(caught.value, stripe_gateway.StripeRequestRejected)
    assert stripe_proxy.behaviour.idempotency_conflicts == ["test-conflict-1"]
    intents = localstripe.payment_intents_of(customer.stripe_customer_id)
    assert [(i["amount"], i["status"]) for i in intents] == [(1_000, "succeeded")]
