"""Dunning: what happens when an off-session payment fails.

After the n-th failed off-session attempt the card is charged again
``BILLING_DUNNING_RETRY_DAYS[n-1]`` days later (default 3, 5 and 7 days after each
failure), and the buyer's finance people are told each time. When the last scheduled
retry fails, the invoice is overdue and its contract is suspended through the contracts
lifecycle (API keys refused, reservations flagged) until the invoice is paid; a payment
resumes it (``payments.resume_if_settled``).

``run_due_retries`` is the beat task's body: it charges every invoice whose retry is due;
``charge_invoice`` locks each one, so two runs at once cannot charge twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import emails
from billing.models import AttemptStatus, Invoice, PaymentAttempt, PaymentStatus
from contracts.lifecycle import IllegalTransition, contract_suspend
from contracts.models import Contract, ContractState

DEFAULT_RETRY_DAYS = (3, 5, 7)
# When Stripe cannot be reached, the same attempt is tried again this much later.
UNAVAILABLE_RETRY_DELAY = timedelta(hours=1)

logger = logging.getLogger(__name__)


def retry_days() -> tuple[int, ...]:
    return tuple(getattr(settings, "BILLING_DUNNING_RETRY_DAYS", DEFAULT_RETRY_DAYS))


def after_failed_attempt(
    *,
    invoice: Invoice,
    attempt: PaymentAttempt,
    now: datetime,
    requires_action: bool,
    reason: str,
) -> None:
    """Schedule the next retry, or suspend at the end of the schedule. Runs inside the
    transaction that recorded the failure (the invoice row is locked)."""
    failures = PaymentAttempt.objects.filter(
        invoice=invoice,
        off_session=True,
        status__in=(AttemptStatus.FAILED, AttemptStatus.REQUIRES_ACTION),
    ).count()
    schedule = retry_days()
    if failures <= len(schedule):
        retry_at = now + timedelta(days=schedule[failures - 1])
        Invoice.objects.filter(pk=invoice.pk).update(
            payment_status=(
                PaymentStatus.REQUIRES_ACTION if requires_action else PaymentStatus.FAILED
            ),
            next_payment_attempt_at=retry_at,
            last_payment_error=reason[:300],
            updated_at=now,
        )
        send = emails.send_authentication_required if requires_action else None
        if send is not None:
            transaction.on_commit(partial(send, invoice_id=invoice.pk, retry_at=retry_at))
        else:
            transaction.on_commit(
                partial(
                    emails.send_payment_failed,
                    invoice_id=invoice.pk,
                    retry_at=retry_at,
                    reason=reason,
                )
            )
        return
    Invoice.objects.filter(pk=invoice.pk).update(
        payment_status=PaymentStatus.OVERDUE,
        next_payment_attempt_at=None,
        dunning_exhausted_at=now,
        last_payment_error=reason[:300],
        updated_at=now,
    )
    contract = Contract.objects.get(pk=invoice.contract_id)
    if contract.state == ContractState.ACTIVE:
        # Ended or suspended meanwhile: nothing to suspend.
        with contextlib.suppress(IllegalTransition):
            contract_suspend(
                contract=contract,
                actor=None,
                reason=f"Invoice {invoice.number} is unpaid after {failures} attempts.",
            )
    transaction.on_commit(partial(emails.send_contract_suspended, invoice_id=invoice.pk))


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
    from billing import payments
    from billing.stripe_gateway import StripeGatewayError, StripeUnavailable

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
