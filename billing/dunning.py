"""Dunning: charging again the invoices whose retry is due.

``run_due_retries`` is the beat task's body: it charges every invoice whose retry the
schedule (``dunning_schedule``: when to retry, when to give up and suspend) made due, or
whose first charge Stripe did not answer; ``payments.charge_invoice`` locks each one, so
two runs at once cannot charge twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.utils import timezone

from billing import payments
from billing.models import Invoice, PaymentStatus
from billing.stripe_gateway import StripeGatewayError, StripeUnavailable

# When Stripe cannot be reached, the same attempt is tried again this much later.
UNAVAILABLE_RETRY_DELAY = timedelta(hours=1)

logger = logging.getLogger(__name__)


def retry_later(*, invoice_id: int, now: datetime) -> None:
    """Stripe did not answer a charge (or answered what no retry of ours should get): its
    attempt stays pending with its key; send it again after ``UNAVAILABLE_RETRY_DELAY``."""
    Invoice.objects.filter(pk=invoice_id).update(
        next_payment_attempt_at=now + UNAVAILABLE_RETRY_DELAY
    )


def due_retries(*, now: datetime) -> list[int]:
    """Invoices whose next attempt is due: a retry after a failure or a needed
    authentication, or a first charge Stripe did not answer (unpaid, rescheduled by
    ``retry_later``)."""
    return list(
        Invoice.objects.filter(
            next_payment_attempt_at__lte=now,
            payment_status__in=(
                PaymentStatus.FAILED,
                PaymentStatus.REQUIRES_ACTION,
                PaymentStatus.UNPAID,
            ),
        )
        .order_by("next_payment_attempt_at", "pk")
        .values_list("pk", flat=True)
    )


def run_due_retries(
    *, now: datetime | None = None, charge: Callable[..., object] | None = None
) -> int:
    """Charge every invoice whose retry is due; returns how many were tried."""
    now = now or timezone.now()
    charge = charge or payments.charge_invoice
    due = due_retries(now=now)
    for invoice_id in due:
        try:
            charge(invoice_id=invoice_id, now=now)
        except StripeGatewayError as error:
            # One invoice never stops the others' retries.
            if not isinstance(error, StripeUnavailable):
                logger.exception("charging invoice %s failed; retrying later", invoice_id)
            retry_later(invoice_id=invoice_id, now=now)
    return len(due)
