"""The ledger: balanced per currency and append-only, enforced by PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction

from billing import ledger
from billing.ledger import Posting, UnbalancedEntry
from billing.models import Account, EntryKind, JournalEntry, JournalLine

pytestmark = pytest.mark.django_db
AT = datetime(2026, 11, 4, tzinfo=UTC)


def _post(key: str = "test:1", amounts=(100, -100), currency="USD") -> JournalEntry:
    return ledger.post_entry(
        kind=EntryKind.PAYMENT,
        key=key,
        memo="test",
        occurred_at=AT,
        postings=[
            Posting(Account.STRIPE_BALANCE, currency, amounts[0]),
            Posting(Account.RECEIVABLE, currency, amounts[1]),
        ],
    )


def test_balanced_entry_is_posted_once_per_key():
    entry = _post()
    again = _post()
    assert again.pk == entry.pk
    assert JournalLine.objects.filter(entry=entry).count() == 2
    assert ledger.account_balances() == {
        (Account.STRIPE_BALANCE, "USD"): 100,
        (Account.RECEIVABLE, "USD"): -100,
    }


def test_unbalanced_entry_is_refused_by_the_service():
    with pytest.raises(UnbalancedEntry):
        _post(amounts=(100, -99))
    assert not JournalEntry.objects.exists()


def test_each_currency_balances_on_its_own():
    with pytest.raises(UnbalancedEntry):
        ledger.post_entry(
            kind=EntryKind.PAYMENT,
            key="x",
            memo="two currencies",
            occurred_at=AT,
            postings=[
                Posting(Account.STRIPE_BALANCE, "USD", 100),
                Posting(Account.RECEIVABLE, "EUR", -100),
            ],
        )


def _raw_unbalanced_entry() -> None:
    entry = JournalEntry.objects.create(
        kind=EntryKind.PAYMENT, key="raw", memo="bypassing the service", occurred_at=AT
    )
    JournalLine.objects.create(
        entry=entry, account=Account.RECEIVABLE, currency="USD", amount_minor=5
    )
    JournalLine.objects.create(
        entry=entry, account=Account.REVENUE, currency="USD", amount_minor=-4
    )


def test_database_refuses_an_unbalanced_entry_at_commit():
    with (
        pytest.raises(IntegrityError, match="does not balance in USD: off by 1"),
        transaction.atomic(),
    ):
        _raw_unbalanced_entry()
        # What COMMIT does with the deferred constraint trigger:
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert not JournalEntry.objects.filter(key="raw").exists()


def test_database_refuses_an_entry_without_lines():
    with pytest.raises(IntegrityError, match="has no lines"), transaction.atomic():
        JournalEntry.objects.create(kind=EntryKind.PAYMENT, key="empty", memo="", occurred_at=AT)
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


@pytest.mark.django_db(transaction=True)
def test_unbalanced_entry_fails_the_real_commit():
    with pytest.raises(IntegrityError, match="does not balance"), transaction.atomic():
        _raw_unbalanced_entry()
    assert not JournalEntry.objects.exists()
    assert not JournalLine.objects.exists()


def _raw(sql: str, *params: object) -> None:
    """Straight to PostgreSQL, past Django's own PROTECT checks."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_journal_rows_are_append_only():
    entry = _post()
    line = entry.lines.first()
    for action in (
        lambda: JournalLine.objects.filter(pk=line.pk).update(amount_minor=1),
        lambda: JournalLine.objects.filter(pk=line.pk).delete(),
        lambda: JournalEntry.objects.filter(pk=entry.pk).update(memo="edited"),
        lambda: _raw("DELETE FROM billing_journalentry WHERE id = %s", entry.pk),
    ):
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
            action()
    line.refresh_from_db()
    entry.refresh_from_db()
    assert (line.amount_minor, entry.memo) == (100, "test")


def test_correction_is_a_reversing_entry():
    entry = _post()
    reversal = ledger.reverse_entry(entry=entry, memo="posted by mistake", occurred_at=AT)
    assert reversal.reverses_id == entry.pk
    assert sorted(reversal.lines.values_list("amount_minor", flat=True)) == [-100, 100]
    assert ledger.reverse_entry(entry=entry, memo="again", occurred_at=AT).pk == reversal.pk
    assert set(ledger.account_balances().values()) == {0}
