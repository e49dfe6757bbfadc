"""Stripe webhooks: verified, stored once by event id, applied idempotently in any order.

The view (``views.stripe_webhook``) is thin: it hands the raw body and signature header to
``receive``. Events are notifications, not truth: for each one we re-fetch the object it
names from Stripe and apply *its current state* (``payments.apply_payment_intent``,
``credit_notes.apply_refund``), so an old ``payment_failed`` arriving after
``succeeded`` changes nothing, and a replayed event finds its id already stored. Storing
the event and applying it happen in one transaction; emails and tasks run on commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from django.db import connection, transaction
from django.utils import timezone

from billing import credit_notes, payments, stripe_gateway
from billing.models import PaymentAttempt, StripeEvent

Apply = Callable[[], object]


def _payment_intent_id(event: stripe_gateway.WebhookEvent) -> str:
    if event.object_type == "payment_intent":
        return event.object_id
    data_object = (event.payload.get("data") or {}).get("object") or {}
    value = data_object.get("payment_intent") or ""
    return value if isinstance(value, str) else str(value.get("id", ""))


def _prepare(event: stripe_gateway.WebhookEvent) -> Apply | None:
    """Fetch what the event is about (network, outside the transaction); return how to
    apply it, or None for events billing does not act on."""
    if event.type.startswith("payment_intent.") or event.type in (
        "charge.succeeded",
        "charge.failed",
    ):
        intent_id = _payment_intent_id(event)
        if not intent_id:
            return None
        intent = stripe_gateway.retrieve_payment_intent(intent_id)
        settlement = payments._settlement_of(intent)
        return lambda: payments._apply(intent=intent, settlement=settlement, now=timezone.now())
    if event.type.startswith("refund.") or event.type.startswith("charge.refund"):
        refund = stripe_gateway.retrieve_refund(event.object_id)
        return lambda: credit_notes.apply_refund(refund=refund)
    if event.type == "charge.refunded":
        intent_id = _payment_intent_id(event)
        attempt = PaymentAttempt.objects.filter(stripe_payment_intent_id=intent_id).first()
        if attempt is None:
            return None
        pending = list(
            attempt.invoice.credit_notes.exclude(stripe_refund_id="").values_list(
                "stripe_refund_id", flat=True
            )
        )
        refunds = [stripe_gateway.retrieve_refund(refund_id) for refund_id in pending]
        return lambda: [credit_notes.apply_refund(refund=refund) for refund in refunds]
    return None


def _store_once(event: stripe_gateway.WebhookEvent) -> bool:
    """INSERT … ON CONFLICT DO NOTHING: True only for the delivery that stored it."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {StripeEvent._meta.db_table}
                (event_id, type, object_id, stripe_created_at, received_at, payload)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (event_id) DO NOTHING
            RETURNING id
            """,  # noqa: S608 (table name from model metadata)
            [
                event.id,
                event.type[:64],
                event.object_id[:64],
                event.created_at,
                timezone.now(),
                json.dumps(event.payload),
            ],
        )
        return cursor.fetchone() is not None


def receive(event: stripe_gateway.WebhookEvent) -> bool:
    """Store and apply ``event``; False when it was already received (a replay)."""
    if StripeEvent.objects.filter(event_id=event.id).exists():
        return False
    apply = _prepare(event)
    with transaction.atomic():
        if not _store_once(event):
            return False  # a concurrent delivery stored it first
        if apply is not None:
            apply()
    return True
