"""manage.py reconcile YYYY-MM: clean on consistent books, every difference named."""

from __future__ import annotations

from datetime import UTC, date, datetime
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection

from billing import ledger
from billing.models import Account, EntryKind, JournalEntry, Payout, SettlementStatement
from billing.settlement import payouts
from billing.settlement.statements import statement_approve
from tests.billing.conftest import save_card
from tests.billing.settlement_builders import (
    OCTOBER,
    close_october,
    observe_available,
    onboard,
    reserve_eight_gpus,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def paid_out_october(buyer_org, partner_org, offer, devices, localstripe, connect_fake):
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
    )
    save_card(buyer_org, localstripe)
    close_october()
    onboard(partner_org, connect_fake)
    statement = SettlementStatement.objects.get()
    with time_machine.travel(datetime(2026, 11, 6, tzinfo=UTC), tick=False):
        statement_approve(statement=statement, actor=None)
        return payouts.statement_pay(statement=statement, actor=None)


def _reconcile(*args: str) -> str:
    out = StringIO()
    call_command("reconcile", *args, stdout=out)
    return out.getvalue()


def test_a_consistent_month_reconciles(paid_out_october):
    output = _reconcile("2026-10")
    assert "No differences" in output
    assert "Stripe transfers = payouts: 1 compared" in output
    assert "paid lines = partner shares + platform fees: 1 compared" in output


def test_a_missing_ledger_line_is_named_and_exits_non_zero(paid_out_october):
    payout = paid_out_october
    entry = JournalEntry.objects.get(key=f"payout:{payout.pk}")
    # Someone bypassed the append-only rule and removed the payout's entry.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")  # triggers off
        cursor.execute("DELETE FROM billing_journalline WHERE entry_id = %s", [entry.pk])
        cursor.execute("DELETE FROM billing_journalentry WHERE id = %s", [entry.pk])
        cursor.execute("SET LOCAL session_replication_role = origin")
    out = StringIO()
    with pytest.raises(CommandError, match="2 difference"):
        call_command("reconcile", "2026-10", stdout=out)
    report = out.getvalue()
    reference = payout.statement.reference
    assert (
        f"[payouts = ledger] payout {payout.stripe_transfer_id} of statement {reference} "
        f"(Andes Hash): expected $5,483.52, found $0.00"
    ) in report
    assert "[payables] partner #" in report and "expected $0.00, found -$5,483.52" in report


def test_a_transfer_stripe_made_that_we_do_not_know_is_a_difference(
    paid_out_october, partner_org, connect_fake
):
    account = partner_org.connect_account
    stray = connect_fake.dispatch(
        "POST",
        "/v1/transfers",
        {"amount": "1234", "currency": "usd", "destination": account.stripe_account_id},
    )[1]
    with pytest.raises(CommandError, match="1 difference"):
        call_command("reconcile", "2026-10", stdout=(out := StringIO()))
    assert f"[stripe] Stripe transfer {stray['id']}" in out.getvalue()
    assert "expected a payout of ours, found -$12.34" in out.getvalue()


def test_a_bogus_entry_and_a_tampered_statement_are_caught(paid_out_october, partner_org):
    ledger.post_entry(
        kind=EntryKind.SETTLEMENT,
        key="settlement:bogus",
        memo="typo",
        occurred_at=datetime(2026, 11, 8, tzinfo=UTC),
        postings=[
            ledger.Posting(Account.PARTNER_SHARE, "USD", 500),
            ledger.Posting(Account.PARTNER_PAYABLE, "USD", -500, partner_org.pk),
        ],
    )
    SettlementStatement.objects.update(
        earnings_minor=548_353, balance_minor=548_353, payout_minor=548_353
    )
    with pytest.raises(CommandError):
        call_command("reconcile", "2026-10", stdout=(out := StringIO()))
    report = out.getvalue()
    assert (
        "[statements] statement" in report
        and "earnings: expected $5,483.52, found $5,483.53" in report
    )
    assert "[payouts = statements]" in report
    assert "[payables]" in report
    assert Payout.objects.count() == 1


def test_an_empty_month_is_clean():
    assert "No differences" in _reconcile("2026-10")
    assert OCTOBER.month == 10
