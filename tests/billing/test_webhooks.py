"""The webhook endpoint: signature on the raw body, stored once, any order, on commit."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from django.urls import reverse

from billing import payments
from billing.models import PaymentStatus, StripeEvent
from tests.billing.conftest import finalized_invoice_for, save_card
from tests.billing.stripe_fakes import sign_payload

pytestmark = pytest.mark.django_db
URL = "/billing/stripe/webhook/"


def _event(event_id: str, event_type: str, data_object: dict) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {"object": data_object},
        }
    ).encode()


def _post(client, payload: bytes, signature: str | None = None):
    return client.post(
        URL,
        data=payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_payload(payload) if signature is None else signature,
    )


def test_url_name():
    assert reverse("billing:stripe_webhook") == URL


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "t=1,v1=deadbeef",
        sign_payload(b"another body"),
        sign_payload(b"x", secret="whsec_wrong"),
    ],
    # Stable ids (the signed ones carry the clock): xdist workers must collect alike.
    ids=["empty", "garbage", "other-body", "wrong-secret"],
)
def test_bad_signature_is_a_400_and_stores_nothing(client, signature):
    payload = _event(
        "evt_bad", "payment_intent.succeeded", {"id": "pi_x", "object": "payment_intent"}
    )
    response = _post(client, payload, signature=signature)
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()


def test_tampered_body_is_a_400(client):
    payload = _event(
        "evt_1", "payment_intent.succeeded", {"id": "pi_x", "object": "payment_intent"}
    )
    signature = sign_payload(payload)
    assert _post(client, payload.replace(b"pi_x", b"pi_y"), signature=signature).status_code == 400
    assert not StripeEvent.objects.exists()


@pytest.fixture
def declined_then_paid(buyer_org, buyer_owner, localstripe):
    """An invoice whose first PaymentIntent was declined and whose second one succeeded
    (the buyer replaced the card), with the Stripe events both produced."""
    save_card(buyer_org, localstripe, number="4000000000000341")
    invoice = finalized_invoice_for(buyer_org)
    failed = payments.charge_invoice(invoice_id=invoice.pk)
    save_card(buyer_org, localstripe)
    succeeded = payments.charge_invoice(invoice_id=invoice.pk)
    assert (failed.status, succeeded.status) == ("failed", "succeeded")
    return invoice, failed, succeeded


def test_events_replayed_and_reordered_change_nothing(
    client, declined_then_paid, django_capture_on_commit_callbacks
):
    invoice, failed, succeeded = declined_then_paid
    success = _event(
        "evt_s",
        "payment_intent.succeeded",
        {"id": succeeded.stripe_payment_intent_id, "object": "payment_intent"},
    )
    failure = _event(
        "evt_f",
        "payment_intent.payment_failed",
        {"id": failed.stripe_payment_intent_id, "object": "payment_intent"},
    )
    stale = _event(
        "evt_stale",
        "payment_intent.payment_failed",
        {
            "id": succeeded.stripe_payment_intent_id,
            "object": "payment_intent",
            "status": "requires_payment_method",
        },
    )
    invoice.refresh_from_db()
    before = (invoice.payment_status, invoice.amount_paid_minor, invoice.payment_attempt_count)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        for payload in (success, stale, failure, success, failure):
            assert _post(client, payload).status_code == 200
    invoice.refresh_from_db()
    assert (
        invoice.payment_status,
        invoice.amount_paid_minor,
        invoice.payment_attempt_count,
    ) == before
    assert before[0] == PaymentStatus.PAID
    assert StripeEvent.objects.count() == 3
    assert callbacks == []  # nothing new happened, nothing was scheduled
    assert json.loads(_post(client, success).content)["duplicate"] is True


def test_event_arriving_before_our_own_record_is_applied(
    client, buyer_org, buyer_owner, localstripe, django_capture_on_commit_callbacks, mailoutbox
):
    """The webhook wins the race against the charge call's own bookkeeping."""
    from django.utils import timezone

    from billing import stripe_gateway
    from billing.models import AttemptStatus, PaymentAttempt
    from billing.payments import _prepare_attempt

    customer = save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org, total_minor=4_200)
    prepared = _prepare_attempt(invoice_id=invoice.pk, off_session=True, now=timezone.now())
    intent = stripe_gateway.create_payment_intent(
        customer_id=customer.stripe_customer_id,
        payment_method_id=customer.default_payment_method_id,
        amount_minor=4_200,
        currency="USD",
        idempotency_key=prepared.attempt.idempotency_key,
        metadata={"invoice_id": str(invoice.pk), "attempt_id": str(prepared.attempt.pk)},
        off_session=True,
    )
    payload = _event(
        "evt_early", "payment_intent.succeeded", {"id": intent.id, "object": "payment_intent"}
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert _post(client, payload).status_code == 200
    attempt = PaymentAttempt.objects.get(pk=prepared.attempt.pk)
    assert (attempt.status, attempt.stripe_payment_intent_id) == (
        AttemptStatus.SUCCEEDED,
        intent.id,
    )
    invoice.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.PAID
    assert len(mailoutbox) == 1
    # The charge call's own result, applied late, changes nothing.
    payments.apply_payment_intent(intent=intent)
    invoice.refresh_from_db()
    assert invoice.amount_paid_minor == 4_200


@pytest.mark.django_db(transaction=True)
def test_localstripe_delivers_signed_webhooks_to_the_live_endpoint(
    live_server, buyer_org, buyer_owner, localstripe
):
    localstripe.register_webhook(name="hashgrid-test", url=f"{live_server.url}{URL}")
    save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org)
    attempt = payments.charge_invoice(invoice_id=invoice.pk)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if StripeEvent.objects.filter(
            type="payment_intent.succeeded", object_id=attempt.stripe_payment_intent_id
        ).exists():
            break
        time.sleep(0.2)
    else:
        pytest.fail("localstripe's payment_intent.succeeded never arrived")
    invoice.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.PAID
    # Point localstripe elsewhere so later tests' events do not come here.
    localstripe.register_webhook(name="hashgrid-test", url="http://127.0.0.1:9/nowhere")
    assert httpx.get(localstripe.js_url).status_code == 200
