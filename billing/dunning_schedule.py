"""Dunning's schedule: what a failed off-session payment leads to.

After the n-th failed off-session attempt the card is charged again
``BILLING_DUNNING_RETRY_DAYS[n-1]`` days later (default 3, 5 and 7 days after each
failure), and the buyer's finance people are told each time. When the last scheduled
retry fails, the invoice is overdue and its contract is suspended through the contracts
lifecycle (API keys refused, reservations flagged) until the invoice is paid; a payment
resumes it (``payments.resume_if_settled``).

``payments`` calls ``after_failed_attempt`` in the transaction that records a failure;
``dunning`` charges the invoices whose retry falls due. This module imports neither.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction

from billing import emails
from billing.models import AttemptStatus, Invoice, PaymentAttempt, PaymentStatus
from contracts.lifecycle import IllegalTransition, contract_suspend
from contracts.models import Contract, ContractState

DEFAULT_RETRY_DAYS = (3, 5, 7)


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
