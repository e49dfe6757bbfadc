"""Payouts: partners onboard a Stripe Connect account; approved statements are paid by a
Connect transfer.

``statement_pay`` works like ``billing.payments.charge_invoice``, in three steps, so no
failure can pay twice:

1. in a transaction, lock the statement and record the payout with its idempotency key
   ``statement-<id>-payout-<attempt>`` (or pick up the pending payout a crash left: same
   key);
2. outside any transaction, ask Stripe for the transfer with that key; on a timeout the
   SDK retries with the same key and Stripe answers with the transfer it already made;
   if it still fails, the payout stays pending and the next try sends the same key;
3. record the transfer: payout paid, statement paid, ledger entry (all idempotent).

Only a refusal by Stripe (4xx) fails the payout; the next try is a new attempt with a new
key (nothing was transferred under the old one). A statement whose balance is not
positive transfers nothing: paying it just closes it (the negative balance is carried).
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit
from accounts.models import Organization, User
from billing import ledger, stripe_gateway
from billing.models import (
    ConnectAccount,
    Payout,
    PayoutStatus,
    SettlementStatement,
    StatementStatus,
)

DEFAULT_CONNECT_COUNTRY = "US"


def payout_idempotency_key(*, statement_id: int, attempt_number: int) -> str:
    return f"statement-{statement_id}-payout-{attempt_number}"


# -- Connect onboarding -------------------------------------------------------------------


def _country_of(partner: Organization) -> str:
    site = partner.sites.order_by("created_at", "pk").first()  # type: ignore[attr-defined]
    return site.country if site is not None else DEFAULT_CONNECT_COUNTRY


def connect_account_ensure(*, partner: Organization, actor: User | None) -> ConnectAccount:
    """The partner's Connect account, created at Stripe on first use (idempotently: the key
    is the organization's, so a retried creation returns the same account)."""
    existing = ConnectAccount.objects.filter(partner=partner).first()
    if existing is not None:
        return existing
    if not partner.is_partner:
        raise ValidationError("Payouts are for partner organizations.", code="not_partner")
    view = stripe_gateway.create_connect_account(
        organization_id=partner.pk,
        country=_country_of(partner),
        email=getattr(actor, "email", "") or "",
        idempotency_key=f"connect-account-organization-{partner.pk}",
    )
    with transaction.atomic():
        account, created = ConnectAccount.objects.get_or_create(
            partner=partner,
            defaults={
                "stripe_account_id": view.id,
                "details_submitted": view.details_submitted,
                "payouts_enabled": view.payouts_enabled,
                "transfers_active": view.transfers_capability == "active",
            },
        )
        if created:
            audit(
                action="billing.connect_account_created",
                actor=actor,
                organization=partner,
                target=account,
                stripe_account_id=view.id,
            )
    return account


def onboarding_link(
    *, partner: Organization, actor: User | None, return_url: str, refresh_url: str
) -> str:
    """A Stripe-hosted onboarding URL for the partner's Connect account."""
    account = connect_account_ensure(partner=partner, actor=actor)
    return stripe_gateway.create_account_link(
        account_id=account.stripe_account_id, refresh_url=refresh_url, return_url=return_url
    )


def connect_account_sync(*, partner: Organization, actor: User | None) -> ConnectAccount | None:
    """Refresh the account's status from Stripe (the partner is back from onboarding)."""
    account = ConnectAccount.objects.filter(partner=partner).first()
    if account is None:
        return None
    view = stripe_gateway.retrieve_connect_account(account.stripe_account_id)
    ready_before = account.can_receive_payouts
    ConnectAccount.objects.filter(pk=account.pk).update(
        details_submitted=view.details_submitted,
        payouts_enabled=view.payouts_enabled,
        transfers_active=view.transfers_capability == "active",
        updated_at=timezone.now(),
    )
    account.refresh_from_db()
    if account.can_receive_payouts != ready_before:
        audit(
            action="billing.connect_account_updated",
            actor=actor,
            organization=partner,
            target=account,
            can_receive_payouts=account.can_receive_payouts,
        )
    return account


# -- paying a statement ---------------------------------------------------------------------


@transaction.atomic
def _prepare_payout(
    *, statement_id: int, actor: User | None, now: datetime
) -> Payout | SettlementStatement:
    """Lock the statement; return the payout to send, or the statement when there is
    nothing to transfer (then it is closed here)."""
    statement = SettlementStatement.objects.select_for_update().get(pk=statement_id)
    if statement.status == StatementStatus.PAID:
        return statement
    if statement.status != StatementStatus.APPROVED:
        raise ValidationError(
            f"Statement {statement.reference} must be approved before it is paid.",
            code="not_approved",
        )
    if statement.payout_minor <= 0:
        SettlementStatement.objects.filter(pk=statement.pk).update(
            status=StatementStatus.PAID, paid_at=now
        )
        audit(
            action="billing.statement_closed",
            actor=actor,
            organization=statement.partner,
            target=statement,
            carried_out_minor=statement.carried_out_minor,
        )
        statement.refresh_from_db()
        return statement
    payout = Payout.objects.select_for_update().filter(statement=statement).first()
    if payout is not None and payout.status == PayoutStatus.PENDING:
        return payout  # a crash or timeout left it: same key
    account = ConnectAccount.objects.filter(partner_id=statement.partner_id).first()
    if account is None or not account.can_receive_payouts:
        raise ValidationError(
            f"{statement.partner} has not finished Stripe onboarding: no payout possible.",
            code="no_connect_account",
        )
    if payout is None:
        payout = Payout.objects.create(
            statement=statement,
            partner_id=statement.partner_id,
            connect_account=account,
            amount_minor=statement.payout_minor,
            currency=statement.currency,
            idempotency_key=payout_idempotency_key(statement_id=statement.pk, attempt_number=1),
            created_by=actor if actor is not None and actor.is_authenticated else None,
            created_at=now,
        )
    else:  # the previous attempt was refused by Stripe: a new attempt, a new key
        attempt = payout.attempt_number + 1
        Payout.objects.filter(pk=payout.pk, status=PayoutStatus.FAILED).update(
            status=PayoutStatus.PENDING,
            attempt_number=attempt,
            idempotency_key=payout_idempotency_key(
                statement_id=statement.pk, attempt_number=attempt
            ),
            connect_account=account,
            failure_code="",
            failure_message="",
            updated_at=now,
        )
        payout.refresh_from_db()
    audit(
        action="billing.payout_started",
        actor=actor,
        organization=statement.partner,
        target=payout,
        statement=statement.reference,
        amount_minor=payout.amount_minor,
        idempotency_key=payout.idempotency_key,
    )
    return payout


def statement_pay(
    *, statement: SettlementStatement, actor: User | None, now: datetime | None = None
) -> Payout | None:
    """Pay an approved statement out. Returns the payout (None when nothing was due).

    ``StripeUnavailable`` → the payout stays pending; calling again re-sends its key.
    """
    now = now or timezone.now()
    prepared = _prepare_payout(statement_id=statement.pk, actor=actor, now=now)
    if isinstance(prepared, SettlementStatement):
        return Payout.objects.filter(statement=prepared).first()
    payout = prepared
    account = payout.connect_account
    transfer_group = f"statement-{payout.statement_id}"
    made = stripe_gateway.find_transfer(transfer_group=transfer_group)
    if made is not None:  # an earlier attempt's transfer went through; its answer was lost
        return _record_transfer(payout=payout, transfer=made, actor=actor, now=now)
    try:
        transfer = stripe_gateway.create_transfer(
            destination=account.stripe_account_id,
            amount_minor=payout.amount_minor,
            currency=payout.currency,
            idempotency_key=payout.idempotency_key,
            transfer_group=transfer_group,
            metadata={
                "statement_id": str(payout.statement_id),
                "payout_id": str(payout.pk),
                "partner_id": str(payout.partner_id),
            },
        )
    except stripe_gateway.StripeRequestRejected as error:
        _record_failure(payout=payout, code=error.code, message=str(error), actor=actor, now=now)
        payout.refresh_from_db()
        return payout
    return _record_transfer(payout=payout, transfer=transfer, actor=actor, now=now)


@transaction.atomic
def _record_failure(
    *, payout: Payout, code: str, message: str, actor: User | None, now: datetime
) -> None:
    # Only the attempt that was refused: a newer attempt (new key) is not failed by an old answer.
    updated = Payout.objects.filter(
        pk=payout.pk, status=PayoutStatus.PENDING, idempotency_key=payout.idempotency_key
    ).update(
        status=PayoutStatus.FAILED,
        failure_code=(code or "rejected")[:64],
        failure_message=message[:300],
        updated_at=now,
    )
    if updated:
        audit(
            action="billing.payout_failed",
            actor=actor,
            organization=payout.partner,
            target=payout,
            code=code,
            message=message[:300],
        )


@transaction.atomic
def _record_transfer(
    *,
    payout: Payout,
    transfer: stripe_gateway.TransferView,
    actor: User | None,
    now: datetime,
) -> Payout:
    locked = Payout.objects.select_for_update().get(pk=payout.pk)
    if locked.status == PayoutStatus.PAID:
        return locked
    if transfer.amount_minor != locked.amount_minor:
        raise ValidationError(
            f"Stripe transferred {transfer.amount_minor}, the payout is {locked.amount_minor}.",
            code="amount_mismatch",
        )
    Payout.objects.filter(pk=locked.pk).update(
        status=PayoutStatus.PAID, stripe_transfer_id=transfer.id, paid_at=now, updated_at=now
    )
    SettlementStatement.objects.filter(
        pk=locked.statement_id, status=StatementStatus.APPROVED
    ).update(status=StatementStatus.PAID, paid_at=now)
    ledger.record_payout(
        payout_id=locked.pk,
        partner_id=locked.partner_id,
        currency=locked.currency,
        amount_minor=locked.amount_minor,
        memo=f"Payout of statement {locked.statement.reference} ({transfer.id})",
        occurred_at=now,
    )
    audit(
        action="billing.payout_paid",
        actor=actor,
        organization=locked.partner,
        target=locked,
        stripe_transfer_id=transfer.id,
        amount_minor=locked.amount_minor,
    )
    locked.refresh_from_db()
    return locked
