"""Collecting finalized invoices: one PaymentIntent per attempt, applied idempotently.

``charge_invoice`` works in three steps so that no failure can charge twice:

1. in a transaction, lock the invoice and record the attempt with its idempotency key
   ``invoice-<id>-attempt-<n>`` and the card it charges (or pick up the attempt a crash
   left pending: same key, same card, even if the buyer has saved another card since;
   Stripe refuses a key replayed with other parameters, and the new card is for the next
   attempt);
2. outside any transaction, ask Stripe for an off-session PaymentIntent with that key;
   on a timeout the SDK retries with the same key and Stripe answers with the
   PaymentIntent it already made; if it still fails, the task retries later: a pending
   attempt picked up again is first looked up at Stripe by its id in the PaymentIntent's
   metadata (Stripe forgets keys after about a day, so a late replay alone could charge
   twice), and sent again with the same key only when Stripe has none;
3. apply what Stripe answered (``apply_payment_intent``).

``apply_payment_intent`` is the one place an attempt's outcome is recorded, whether it
comes from the charge call, a webhook or the invoice page. It takes the PaymentIntent as
Stripe says it is *now* (callers re-fetch it), moves the attempt forward only, and is a
no-op the second time, so webhooks may come twice and in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from billing import dunning_schedule, emails, ledger, stripe_gateway
from billing.models import (
    AttemptStatus,
    BillingCustomer,
    Invoice,
    InvoiceStatus,
    PaymentAttempt,
    PaymentStatus,
)
from contracts.lifecycle import IllegalTransition, contract_resume
from contracts.models import ContractState

# Invoice payment statuses from which a new charge may start.
CHARGEABLE = (
    PaymentStatus.UNPAID,
    PaymentStatus.FAILED,
    PaymentStatus.OVERDUE,
    PaymentStatus.REQUIRES_ACTION,
)


# Clock skew allowed between our attempt's timestamp and Stripe's ``created``.
REPLAY_LOOKUP_MARGIN = timedelta(minutes=10)


class NothingToCharge(Exception):
    """The invoice is paid, not finalized, or owes nothing."""


def idempotency_key(*, invoice_id: int, attempt_number: int) -> str:
    return f"invoice-{invoice_id}-attempt-{attempt_number}"


def _attempt_status(intent: stripe_gateway.PaymentIntentView) -> str:
    if intent.status == "succeeded":
        return AttemptStatus.SUCCEEDED
    if intent.needs_authentication:
        return AttemptStatus.REQUIRES_ACTION
    if intent.status == "processing":
        return AttemptStatus.PROCESSING
    if intent.status in ("requires_payment_method", "canceled"):
        return AttemptStatus.FAILED
    return AttemptStatus.PENDING


@dataclass(frozen=True)
class PreparedAttempt:
    attempt: PaymentAttempt
    customer_id: str
    payment_method_id: str
    # A pending attempt picked up again: it may already be at Stripe.
    is_replay: bool


@transaction.atomic
def _prepare_attempt(
    *, invoice_id: int, off_session: bool, now: datetime
) -> PreparedAttempt | None:
    """Lock the invoice and record (or pick up) the attempt; None when no card is on file
    (the attempt is then recorded as failed, which dunning counts).

    A pending attempt keeps the card it was recorded with: its key may already be at
    Stripe, and a replay must send exactly what was sent the first time.
    """
    invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
    pending = (
        PaymentAttempt.objects.select_for_update()
        .filter(invoice=invoice, status=AttemptStatus.PENDING)
        .order_by("-attempt_number")
        .first()
    )
    is_replay = pending is not None
    customer = BillingCustomer.objects.filter(organization_id=invoice.buyer_id).first()
    current_card = customer.default_payment_method_id if customer is not None else ""
    if pending is None:
        if _retire_unauthenticated(invoice=invoice, now=now):
            invoice.refresh_from_db()
        if invoice.status != InvoiceStatus.FINALIZED or invoice.payment_status not in CHARGEABLE:
            raise NothingToCharge(f"invoice {invoice} is {invoice.get_payment_status_display()}")
        if invoice.amount_due_minor <= 0:
            raise NothingToCharge(f"invoice {invoice} owes nothing")
        number = invoice.payment_attempt_count + 1
        pending = PaymentAttempt.objects.create(
            invoice=invoice,
            attempt_number=number,
            idempotency_key=idempotency_key(invoice_id=invoice.pk, attempt_number=number),
            amount_minor=invoice.amount_due_minor,
            currency=invoice.currency,
            off_session=off_session,
            payment_method_id=current_card,
            created_at=now,
        )
        Invoice.objects.filter(pk=invoice.pk).update(
            payment_attempt_count=number, next_payment_attempt_at=None, updated_at=now
        )
    elif not pending.payment_method_id and current_card:
        # Recorded before attempts kept their card: the current one is the best guess, and
        # from now on every replay of this key sends it.
        PaymentAttempt.objects.filter(pk=pending.pk, payment_method_id="").update(
            payment_method_id=current_card, updated_at=now
        )
        pending.payment_method_id = current_card
    if customer is None or not pending.payment_method_id:
        PaymentAttempt.objects.filter(pk=pending.pk).update(
            status=AttemptStatus.FAILED,
            failure_code="no_payment_method",
            failure_message="No card on file.",
            updated_at=now,
        )
        pending.refresh_from_db()
        _after_failure(attempt=pending, now=now, requires_action=False)
        return None
    return PreparedAttempt(
        attempt=pending,
        customer_id=customer.stripe_customer_id,
        payment_method_id=pending.payment_method_id,
        is_replay=is_replay,
    )


def _retire_unauthenticated(*, invoice: Invoice, now: datetime) -> bool:
    """Before a new attempt, cancel earlier PaymentIntents still waiting for 3-D Secure.

    Otherwise the buyer could still authenticate the old one after the new one is
    charged, and pay the invoice twice. One that succeeded meanwhile is recorded instead
    (the invoice is then paid and nothing new is charged). Returns whether any changed.
    """
    waiting = PaymentAttempt.objects.select_for_update().filter(
        invoice=invoice,
        status=AttemptStatus.REQUIRES_ACTION,
        stripe_payment_intent_id__isnull=False,
    )
    changed = False
    for attempt in waiting:
        intent_id = str(attempt.stripe_payment_intent_id)  # not null: filtered above
        try:
            intent = stripe_gateway.cancel_payment_intent(intent_id)
        except stripe_gateway.StripeRequestRejected:
            intent = stripe_gateway.retrieve_payment_intent(intent_id)
        if _attempt_status(intent) == AttemptStatus.SUCCEEDED:
            _apply(intent=intent, settlement=None, now=now)
        else:
            # Superseded, not a new decline: dunning already counted this attempt.
            PaymentAttempt.objects.filter(
                pk=attempt.pk, status=AttemptStatus.REQUIRES_ACTION
            ).update(
                status=AttemptStatus.FAILED,
                failure_code="superseded",
                failure_message="Replaced by a newer attempt before it was authenticated.",
                updated_at=now,
            )
        changed = True
    return changed


def charge_invoice(
    *, invoice_id: int, off_session: bool = True, now: datetime | None = None
) -> PaymentAttempt | None:
    """Charge what the invoice owes to the buyer's saved card. Returns the attempt, or
    None when there was nothing to charge. ``StripeUnavailable`` → retry later."""
    now = now or timezone.now()
    try:
        prepared = _prepare_attempt(invoice_id=invoice_id, off_session=off_session, now=now)
    except NothingToCharge:
        return None
    if prepared is None:
        return None
    attempt = prepared.attempt
    if prepared.is_replay:
        # Its key may be older than Stripe's idempotency window (about a day): find what
        # the first send made before sending again, so a late replay cannot charge twice.
        existing = stripe_gateway.find_payment_intent(
            customer_id=prepared.customer_id,
            attempt_id=attempt.pk,
            created_since=attempt.created_at - REPLAY_LOOKUP_MARGIN,
        )
        if existing is not None:
            return apply_payment_intent(intent=existing, now=now) or attempt
    try:
        intent = stripe_gateway.create_payment_intent(
            customer_id=prepared.customer_id,
            payment_method_id=prepared.payment_method_id,
            amount_minor=attempt.amount_minor,
            currency=attempt.currency,
            idempotency_key=attempt.idempotency_key,
            metadata={
                "invoice_id": str(invoice_id),
                "attempt_id": str(attempt.pk),
                "attempt_number": str(attempt.attempt_number),
            },
            off_session=attempt.off_session,
        )
    except stripe_gateway.StripeRequestRejected as error:
        if not _refuses_the_card(error):
            raise  # our request was wrong: an error for operators, not the buyer's decline
        # Refused before any PaymentIntent existed (a declined card, a card removed at
        # Stripe, a customer Stripe no longer has): a failed attempt, which dunning counts
        # and retries. (``IdempotencyConflict`` is not a refusal and propagates.)
        _record_rejection(
            attempt=attempt, code=error.code or "request_rejected", message=str(error), now=now
        )
        attempt.refresh_from_db()
        return attempt
    return apply_payment_intent(intent=intent, now=now) or attempt


def _refuses_the_card(error: stripe_gateway.StripeRequestRejected) -> bool:
    """A refusal that is about the buyer's card or customer (a decline, 402, or a card or
    customer Stripe no longer has, 404): the attempt failed. Any other 4xx (a bad
    parameter, an amount below Stripe's minimum) is our error, not the buyer's."""
    return isinstance(error, stripe_gateway.CardRejected) or error.status in (402, 404)


def _settlement_of(
    intent: stripe_gateway.PaymentIntentView,
) -> stripe_gateway.ChargeSettlement | None:
    if intent.status != "succeeded" or not intent.latest_charge_id:
        return None
    return stripe_gateway.retrieve_charge_settlement(intent.latest_charge_id)


def sync_payment_intent(
    *, payment_intent_id: str, now: datetime | None = None
) -> PaymentAttempt | None:
    """Re-fetch a PaymentIntent from Stripe and apply it (webhooks, the invoice page)."""
    intent = stripe_gateway.retrieve_payment_intent(payment_intent_id)
    return apply_payment_intent(intent=intent, now=now)


def _find_attempt(intent: stripe_gateway.PaymentIntentView) -> PaymentAttempt | None:
    condition = Q(stripe_payment_intent_id=intent.id)
    attempt_id = intent.metadata.get("attempt_id", "")
    if attempt_id.isdigit():
        condition |= Q(pk=int(attempt_id), stripe_payment_intent_id__isnull=True)
    return PaymentAttempt.objects.filter(condition).order_by("pk").first()


def apply_payment_intent(
    *,
    intent: stripe_gateway.PaymentIntentView,
    now: datetime | None = None,
    settlement: stripe_gateway.ChargeSettlement | None = None,
) -> PaymentAttempt | None:
    """Record what a PaymentIntent's current state means for its attempt and invoice."""
    now = now or timezone.now()
    if settlement is None:
        settlement = _settlement_of(intent)
    return _apply(intent=intent, settlement=settlement, now=now)


@transaction.atomic
def _apply(
    *,
    intent: stripe_gateway.PaymentIntentView,
    settlement: stripe_gateway.ChargeSettlement | None,
    now: datetime,
) -> PaymentAttempt | None:
    found = _find_attempt(intent)
    if found is None:
        return None  # not one of ours
    # Invoice first, then attempt: the order charging takes them, so the two never deadlock.
    invoice = Invoice.objects.select_for_update().get(pk=found.invoice_id)
    attempt = PaymentAttempt.objects.select_for_update().get(pk=found.pk)
    attempt.invoice = invoice
    status = _attempt_status(intent)
    previous = attempt.status
    attempt.stripe_payment_intent_id = intent.id
    if intent.latest_charge_id:
        attempt.stripe_charge_id = intent.latest_charge_id
    if previous == AttemptStatus.SUCCEEDED:
        _record_fee(attempt=attempt, settlement=settlement, now=now)
        attempt.save(update_fields=["stripe_payment_intent_id", "stripe_charge_id", "updated_at"])
        return attempt
    if status == previous or status == AttemptStatus.PENDING:
        attempt.save(update_fields=["stripe_payment_intent_id", "stripe_charge_id", "updated_at"])
        return attempt
    if previous == AttemptStatus.FAILED and status != AttemptStatus.SUCCEEDED:
        # A late "requires_action"/"processing" view of an attempt already failed and
        # counted by dunning: nothing new.
        attempt.save(update_fields=["stripe_payment_intent_id", "stripe_charge_id", "updated_at"])
        return attempt
    attempt.status = status
    attempt.failure_code = intent.failure_code[:64]
    attempt.failure_message = intent.failure_message[:300]
    attempt.save()
    if status == AttemptStatus.SUCCEEDED:
        _record_success(attempt=attempt, invoice=invoice, intent=intent, now=now)
        _record_fee(attempt=attempt, settlement=settlement, now=now)
    elif status == AttemptStatus.PROCESSING:
        Invoice.objects.filter(pk=invoice.pk).update(
            payment_status=PaymentStatus.PROCESSING, updated_at=now
        )
    elif status in (AttemptStatus.FAILED, AttemptStatus.REQUIRES_ACTION):
        _after_failure(
            attempt=attempt, now=now, requires_action=status == AttemptStatus.REQUIRES_ACTION
        )
    return attempt


def _record_rejection(*, attempt: PaymentAttempt, code: str, message: str, now: datetime) -> None:
    with transaction.atomic():
        updated = PaymentAttempt.objects.filter(pk=attempt.pk, status=AttemptStatus.PENDING).update(
            status=AttemptStatus.FAILED,
            failure_code=code[:64],
            failure_message=message[:300],
            updated_at=now,
        )
        if updated:
            attempt.refresh_from_db()
            _after_failure(attempt=attempt, now=now, requires_action=False)


def _after_failure(*, attempt: PaymentAttempt, now: datetime, requires_action: bool) -> None:
    invoice = Invoice.objects.select_for_update().get(pk=attempt.invoice_id)
    reason = attempt.failure_message or attempt.failure_code or "declined"
    if not attempt.off_session:
        # The buyer is on the invoice page and sees the answer; dunning is not advanced.
        Invoice.objects.filter(pk=invoice.pk).update(
            payment_status=(
                PaymentStatus.REQUIRES_ACTION if requires_action else invoice.payment_status
            )
            if invoice.payment_status != PaymentStatus.OVERDUE
            else PaymentStatus.OVERDUE,
            last_payment_error=reason[:300],
            updated_at=now,
        )
        return
    dunning_schedule.after_failed_attempt(
        invoice=invoice, attempt=attempt, now=now, requires_action=requires_action, reason=reason
    )


def _record_success(
    *,
    attempt: PaymentAttempt,
    invoice: Invoice,
    intent: stripe_gateway.PaymentIntentView,
    now: datetime,
) -> None:
    invoice.amount_paid_minor += attempt.amount_minor
    settled = invoice.amount_due_minor <= 0
    Invoice.objects.filter(pk=invoice.pk).update(
        amount_paid_minor=invoice.amount_paid_minor,
        payment_status=PaymentStatus.PAID if settled else PaymentStatus.UNPAID,
        paid_at=now if settled else None,
        next_payment_attempt_at=None,
        last_payment_error="",
        updated_at=now,
    )
    ledger.record_payment(attempt=attempt, payment_intent_id=intent.id, occurred_at=now)
    if settled:
        resume_if_settled(contract_id=invoice.contract_id)
    transaction.on_commit(
        partial(
            emails.send_payment_received, invoice_id=invoice.pk, amount_minor=attempt.amount_minor
        )
    )


def _record_fee(
    *,
    attempt: PaymentAttempt,
    settlement: stripe_gateway.ChargeSettlement | None,
    now: datetime,
) -> None:
    if settlement is None or attempt.fee_minor is not None:
        return
    updated = PaymentAttempt.objects.filter(pk=attempt.pk, fee_minor__isnull=True).update(
        fee_minor=settlement.fee_minor, updated_at=now
    )
    if updated:
        attempt.fee_minor = settlement.fee_minor
        ledger.record_stripe_fee(
            attempt=attempt,
            balance_transaction_id=settlement.balance_transaction_id,
            fee_minor=settlement.fee_minor,
            occurred_at=now,
        )


def resume_if_settled(*, contract_id: int) -> bool:
    """Resume a contract dunning suspended once none of its invoices is overdue."""
    from contracts.models import Contract

    contract = Contract.objects.filter(pk=contract_id).first()
    if contract is None or contract.state != ContractState.SUSPENDED:
        return False
    if Invoice.objects.filter(
        contract_id=contract_id, payment_status=PaymentStatus.OVERDUE
    ).exists():
        return False
    try:
        contract_resume(contract=contract, actor=None)
    except IllegalTransition:
        return False
    return True


def pay_now(*, invoice: Invoice) -> PaymentAttempt:
    """The buyer pays from the invoice page (on session: 3-D Secure can be completed)."""
    if not invoice.is_outstanding or invoice.amount_due_minor <= 0:
        raise ValidationError("This invoice has nothing to pay.", code="nothing_due")
    if invoice.payment_status == PaymentStatus.PROCESSING:
        raise ValidationError("A payment of this invoice is being processed.", code="processing")
    attempt = charge_invoice(invoice_id=invoice.pk, off_session=False)
    if attempt is None:
        raise ValidationError("Add a card before paying.", code="no_payment_method")
    return attempt


def client_secret_for(*, attempt: PaymentAttempt) -> str:
    """The client secret Stripe.js needs to authenticate ``attempt`` (never stored)."""
    if attempt.status != AttemptStatus.REQUIRES_ACTION or not attempt.stripe_payment_intent_id:
        return ""
    return stripe_gateway.payment_intent_client_secret(attempt.stripe_payment_intent_id)
