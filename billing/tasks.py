"""Celery tasks: thin, idempotent, ids in; the services do the work.

Charges and refunds retry only what is retryable (Stripe unreachable), with the same
idempotency key each time, so a retry can never move money twice.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from billing import closing, credit_notes, dunning, enqueue, payments, reconcile_runs
from billing.stripe_gateway import StripeUnavailable

logger = logging.getLogger(__name__)

MAX_STRIPE_RETRIES = 8


@shared_task(
    name=enqueue.CHARGE_INVOICE,
    ignore_result=True,
    autoretry_for=(StripeUnavailable,),
    retry_backoff=30,
    retry_backoff_max=3600,
    max_retries=MAX_STRIPE_RETRIES,
)
def charge_invoice(invoice_id: int) -> str | None:
    attempt = payments.charge_invoice(invoice_id=invoice_id)
    return attempt.status if attempt is not None else None


@shared_task(
    name=enqueue.REFUND_CREDIT_NOTE,
    ignore_result=True,
    autoretry_for=(StripeUnavailable,),
    retry_backoff=30,
    retry_backoff_max=3600,
    max_retries=MAX_STRIPE_RETRIES,
)
def refund_credit_note(credit_note_id: int) -> str:
    return credit_notes.refund_credit_note(credit_note_id=credit_note_id).refund_status


@shared_task(name="billing.tasks.run_dunning", ignore_result=True)
def run_dunning() -> int:
    tried = dunning.run_due_retries(now=timezone.now())
    logger.info("dunning: %d invoices retried", tried)
    return tried


@shared_task(name="billing.tasks.close_due_periods", ignore_result=True)
def close_due_periods() -> dict[str, object] | None:
    result = closing.close_due_periods(now=timezone.now())
    if result is None:
        return None
    logger.info("period close %s: %s", result.month, result)
    return {"month": result.month.isoformat(), "finalized": result.finalized}


@shared_task(name=enqueue.RUN_RECONCILE, ignore_result=True)
def run_reconcile(run_id: int) -> str | None:
    run = reconcile_runs.reconcile_run_execute(run_id=run_id)
    return run.status if run is not None else None
