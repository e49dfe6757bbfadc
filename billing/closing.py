"""Closing a billing period: draft, finalize (after the grace window), charge, and draft
the partners' settlement statements (``billing.settlement.statements``).

``close_period`` is what ``manage.py close_period YYYY-MM`` and the daily beat task run.
Every step is idempotent (drafts are recomputed only when the rating changed, finalized
invoices are never touched, an invoice is charged only while it owes money and has no
attempt in flight), so running it twice changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime

from django.utils import timezone

from billing import dunning, invoices, payments
from billing.models import Invoice, InvoiceStatus, PaymentStatus
from billing.periods import finalizable_at, month_bounds, month_of, previous_month
from billing.settlement.statements import DraftResult, draft_statements
from billing.stripe_gateway import StripeGatewayError, StripeNotConfigured, StripeUnavailable

Progress = Callable[[str, int, int], None]

logger = logging.getLogger(__name__)


@dataclass
class CloseResult:
    month: date
    drafted: invoices.DraftResult = field(default_factory=invoices.DraftResult)
    finalized: int = 0
    # Why finalization did not happen ("" when it did or nothing was left to finalize).
    finalize_waiting_until: datetime | None = None
    charged: int = 0
    charge_failures: int = 0
    charge_deferred: int = 0
    # Partner statements drafted for the month once its invoices are final (settlement).
    statements: DraftResult | None = None


def payable_invoices(*, month: date) -> list[int]:
    """Finalized invoices of the month that owe money and were never charged."""
    return list(
        Invoice.objects.filter(
            month=month,
            status=InvoiceStatus.FINALIZED,
            payment_status=PaymentStatus.UNPAID,
            payment_attempt_count=0,
            total_minor__gt=0,
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def close_period(
    *,
    month: date,
    now: datetime | None = None,
    charge: bool = True,
    progress: Progress | None = None,
) -> CloseResult:
    now = now or timezone.now()
    result = CloseResult(month=month)
    result.drafted = invoices.draft_invoices(month=month, now=now, progress=progress)
    if now < finalizable_at(month):
        result.finalize_waiting_until = finalizable_at(month)
        return result
    result.finalized = invoices.finalize_invoices(month=month, now=now, progress=progress).finalized
    if charge:
        _charge(result=result, month=month, now=now, progress=progress)
    # The month's invoices are final: settle what has been paid so far with the partners.
    result.statements = draft_statements(month=month, now=now)
    return result


def _charge(*, result: CloseResult, month: date, now: datetime, progress: Progress | None) -> None:
    due = payable_invoices(month=month)
    for done, invoice_id in enumerate(due, start=1):
        try:
            attempt = payments.charge_invoice(invoice_id=invoice_id, now=now)
        except StripeGatewayError as error:
            # No answer, or not a refusal (refusals are failed attempts): the attempt stays
            # pending with its key and dunning sends it again later (same key, so never a
            # second charge); the other invoices are still charged.
            if not isinstance(error, StripeUnavailable | StripeNotConfigured):
                logger.exception("charging invoice %s failed; retrying later", invoice_id)
            dunning.retry_later(invoice_id=invoice_id, now=now)
            result.charge_deferred += 1
        else:
            if attempt is not None and attempt.status == "succeeded":
                result.charged += 1
            else:
                result.charge_failures += 1
        if progress is not None:
            progress("charged", done, len(due))


def close_due_periods(*, now: datetime | None = None) -> CloseResult | None:
    """The beat task's body: close last month once it has ended (drafts at once, the
    rest after the grace window; later runs are no-ops)."""
    now = now or timezone.now()
    month = previous_month(month_of(now))
    if now < month_bounds(month)[1]:
        return None
    return close_period(month=month, now=now)
