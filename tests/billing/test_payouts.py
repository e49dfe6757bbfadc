"""Payouts through the Stripe Connect fake: onboarding, transfers idempotent under
retries, never negative, and a refund after a payout lands on the next statement."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import AuditEvent
from billing import stripe_gateway
from billing.credit_notes import credit_note_issue
from billing.models import (
    Account,
    JournalLine,
    Payout,
    PayoutStatus,
    SettlementStatement,
    StatementAdjustment,
    StatementStatus,
)
from billing.settlement import payouts
from billing.settlement.statements import draft_statements, statement_approve
from tests.billing.conftest import save_card
from tests.billing.settlement_builders import (
    NOVEMBER,
    OCTOBER,
    close_october,
    observe_available,
    onboard,
    reserve_eight_gpus,
)

pytestmark = pytest.mark.django_db
D = Decimal
APPROVE_AT = datetime(2026, 11, 6, tzinfo=UTC)
PAY_AT = datetime(2026, 11, 7, tzinfo=UTC)
# 8 GPUs x 408 h x $2.10 = $6,854.40, fully available; 80 % (the default share) = $5,483.52.
OCTOBER_SHARE = 548_352


@pytest.fixture
def approved_october(buyer_org, partner_org, offer, devices, localstripe):
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
    )
    save_card(buyer_org, localstripe)
    close_october()
    statement = SettlementStatement.objects.get(partner=partner_org, month=OCTOBER)
    with time_machine.travel(APPROVE_AT, tick=False):
        return statement_approve(statement=statement, actor=None), line


def _pay(statement):
    with time_machine.travel(PAY_AT, tick=False):
        return payouts.statement_pay(statement=statement, actor=None)


def test_onboarding_creates_one_account_and_waits_for_stripe(partner_org, connect_fake):
    account = payouts.connect_account_ensure(partner=partner_org, actor=None)
    assert payouts.connect_account_ensure(partner=partner_org, actor=None) == account
    assert list(connect_fake.state.accounts) == [account.stripe_account_id]
    stored = connect_fake.state.accounts[account.stripe_account_id]
    assert (stored["type"], stored["capabilities"], stored["metadata"]) == (
        "express",
        {"transfers": "inactive"},
        {"organization_id": str(partner_org.pk)},
    )
    assert not account.can_receive_payouts
    link = payouts.onboarding_link(
        partner=partner_org,
        actor=None,
        return_url="http://testserver/return",
        refresh_url="http://testserver/refresh",
    )
    assert link.startswith(connect_fake.url + "/connect/onboarding/")
    connect_fake.complete_onboarding(account.stripe_account_id)
    assert payouts.connect_account_sync(partner=partner_org, actor=None).can_receive_payouts


def test_pay_transfers_the_balance_once_and_records_it(approved_october, partner_org, connect_fake):
    statement, _line = approved_october
    account = onboard(partner_org, connect_fake)
    payout = _pay(statement)
    assert (payout.status, payout.amount_minor, payout.idempotency_key) == (
        PayoutStatus.PAID,
        OCTOBER_SHARE,
        f"statement-{statement.pk}-payout-1",
    )
    transfers = connect_fake.transfers_to(account.stripe_account_id)
    assert [(t["id"], t["amount"], t["currency"], t["transfer_group"]) for t in transfers] == [
        (payout.stripe_transfer_id, OCTOBER_SHARE, "usd", f"statement-{statement.pk}")
    ]
    statement.refresh_from_db()
    assert (statement.status, statement.paid_at) == (StatementStatus.PAID, PAY_AT)
    payout_lines = sorted(
        JournalLine.objects.filter(entry__key=f"payout:{payout.pk}").values_list(
            "account", "amount_minor"
        )
    )
    assert payout_lines == [
        (Account.PARTNER_PAYABLE, OCTOBER_SHARE),
        (Account.STRIPE_BALANCE, -OCTOBER_SHARE),
    ]
    # Paying again is a no-op: same payout, no new transfer.
    assert _pay(statement) == payout
    assert len(connect_fake.transfers_to(account.stripe_account_id)) == 1
    assert {"billing.payout_started", "billing.payout_paid"} <= set(
        AuditEvent.objects.values_list("action", flat=True)
    )


def test_a_lost_response_is_retried_with_the_same_key(approved_october, partner_org, connect_fake):
    statement, _line = approved_october
    account = onboard(partner_org, connect_fake)
    connect_fake.state.fail_next_after_create = {"/v1/transfers"}
    payout = _pay(statement)
    assert payout.status == PayoutStatus.PAID
    keys = [key for path, key in connect_fake.state.posts if path == "/v1/transfers"]
    assert keys == [payout.idempotency_key, payout.idempotency_key]  # the SDK's retry
    assert len(connect_fake.transfers_to(account.stripe_account_id)) == 1


def test_a_crash_after_the_transfer_is_made_pays_once(approved_october, partner_org, connect_fake):
    statement, _line = approved_october
    account = onboard(partner_org, connect_fake)
    # The worker recorded the payout and got the transfer made, then died before
    # recording it: the payout is still pending with its key.
    pending = payouts._prepare_payout(statement_id=statement.pk, actor=None, now=PAY_AT)
    assert isinstance(pending, Payout) and pending.status == PayoutStatus.PENDING
    first = stripe_gateway.create_transfer(
        destination=account.stripe_account_id,
        amount_minor=pending.amount_minor,
        currency="USD",
        idempotency_key=pending.idempotency_key,
        transfer_group=f"statement-{statement.pk}",
        metadata={
            "statement_id": str(statement.pk),
            "payout_id": str(pending.pk),
            "partner_id": str(partner_org.pk),
        },
    )
    payout = _pay(statement)
    assert (payout.status, payout.stripe_transfer_id) == (PayoutStatus.PAID, first.id)
    assert len(connect_fake.transfers_to(account.stripe_account_id)) == 1


def test_a_transfer_made_long_ago_is_found_not_sent_again(
    approved_october, partner_org, connect_fake
):
    """Stripe forgets idempotency keys after a day: a pending payout retried later must
    find the transfer its lost answer described, not make a second one."""
    statement, _line = approved_october
    account = onboard(partner_org, connect_fake)
    pending = payouts._prepare_payout(statement_id=statement.pk, actor=None, now=PAY_AT)
    assert isinstance(pending, Payout)
    first = stripe_gateway.create_transfer(
        destination=account.stripe_account_id,
        amount_minor=pending.amount_minor,
        currency="USD",
        idempotency_key=pending.idempotency_key,
        transfer_group=f"statement-{statement.pk}",
        metadata={"statement_id": str(statement.pk)},
    )
    connect_fake.state.idempotency.clear()  # the key expired at Stripe

    payout = _pay(statement)

    assert (payout.status, payout.stripe_transfer_id) == (PayoutStatus.PAID, first.id)
    assert len(connect_fake.transfers_to(account.stripe_account_id)) == 1
    posts = [key for path, key in connect_fake.state.posts if path == "/v1/transfers"]
    assert posts == [pending.idempotency_key]


def test_same_key_with_different_parameters_is_a_conflict_not_a_refusal(partner_org, connect_fake):
    """Stripe refuses the second request, but the first one transferred: the gateway says
    "conflict" (outcome of the key unknown), never "refused", which payouts would record
    as a failed attempt and send again under a new key."""
    account = onboard(partner_org, connect_fake)
    arguments = {
        "destination": account.stripe_account_id,
        "currency": "USD",
        "idempotency_key": "statement-999-payout-1",
        "transfer_group": "statement-999",
        "metadata": {},
    }
    stripe_gateway.create_transfer(amount_minor=100, **arguments)
    with pytest.raises(stripe_gateway.IdempotencyConflict) as conflict:
        stripe_gateway.create_transfer(amount_minor=200, **arguments)
    assert not isinstance(conflict.value, stripe_gateway.StripeRequestRejected)
    assert [t["amount"] for t in connect_fake.transfers_to(account.stripe_account_id)] == [100]


def test_no_payout_without_onboarding_and_a_refusal_fails_the_attempt(
    approved_october, partner_org, connect_fake
):
    statement, _line = approved_october
    with pytest.raises(ValidationError, match="onboarding"):
        _pay(statement)
    assert not Payout.objects.exists()
    onboard(partner_org, connect_fake)
    connect_fake.state.available_minor["usd"] = 100
    payout = _pay(statement)
    assert (payout.status, payout.failure_code) == (PayoutStatus.FAILED, "balance_insufficient")
    assert SettlementStatement.objects.get(pk=statement.pk).status == StatementStatus.APPROVED
    connect_fake.state.available_minor["usd"] = 10**9
    retried = _pay(statement)
    assert (retried.status, retried.attempt_number, retried.idempotency_key) == (
        PayoutStatus.PAID,
        2,
        f"statement-{statement.pk}-payout-2",
    )


def test_a_refund_after_the_payout_is_a_negative_adjustment_carried_forward(
    approved_october, partner_org, connect_fake
):
    statement, line = approved_october
    onboard(partner_org, connect_fake)
    _pay(statement)
    invoice = line.contract.invoices.get(month=OCTOBER)
    with time_machine.travel(datetime(2026, 11, 10, tzinfo=UTC), tick=False):
        note = credit_note_issue(
            invoice=invoice, amount_minor=10_000, reason="Goodwill for a slow week", actor=None
        )
    with time_machine.travel(datetime(2026, 12, 4, 1, tzinfo=UTC), tick=False):
        draft_statements(month=NOVEMBER)
    adjustment = StatementAdjustment.objects.get(credit_note=note)
    # All of the invoice was this partner's, at 80 %: -$100.00 → -$80.00 to the partner.
    assert (
        adjustment.partner_id,
        adjustment.amount_minor,
        adjustment.partner_share_minor,
        adjustment.platform_fee_minor,
    ) == (partner_org.pk, -10_000, -8_000, -2_000)
    november = SettlementStatement.objects.get(partner=partner_org, month=NOVEMBER)
    assert (
        november.earnings_minor,
        november.adjustments_minor,
        november.carried_in_minor,
        november.balance_minor,
        november.payout_minor,
        november.carried_out_minor,
    ) == (0, -8_000, 0, -8_000, 0, -8_000)
    assert adjustment.statement == november
    # Approving and "paying" it transfers nothing: a negative balance is never paid out.
    with time_machine.travel(datetime(2026, 12, 6, tzinfo=UTC), tick=False):
        statement_approve(statement=november, actor=None)
        assert payouts.statement_pay(statement=november, actor=None) is None
    november.refresh_from_db()
    assert november.status == StatementStatus.PAID
    assert Payout.objects.count() == 1
    # It is carried into December's statement, which is drafted although nothing else is.
    with time_machine.travel(datetime(2027, 1, 4, 1, tzinfo=UTC), tick=False):
        draft_statements(month=date(2026, 12, 1))
    december = SettlementStatement.objects.get(partner=partner_org, month=date(2026, 12, 1))
    assert (december.carried_in_minor, december.balance_minor, december.payout_minor) == (
        -8_000,
        -8_000,
        0,
    )
    payable = sum(
        JournalLine.objects.filter(
            account=Account.PARTNER_PAYABLE, organization=partner_org
        ).values_list("amount_minor", flat=True)
    )
    assert payable == 8_000  # a debit: the partner owes it back from future earnings


def test_the_database_refuses_a_negative_payout(approved_october, partner_org, connect_fake):
    statement, _line = approved_october
    account = onboard(partner_org, connect_fake)
    with pytest.raises(IntegrityError), transaction.atomic():
        Payout.objects.create(
            statement=statement,
            partner=partner_org,
            connect_account=account,
            amount_minor=-1,
            currency="USD",
            idempotency_key="x",
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        SettlementStatement.objects.filter(pk=statement.pk).update(
            payout_minor=-5, carried_out_minor=0
        )
