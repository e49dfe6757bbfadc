"""The double-entry ledger: one journal entry per money movement, append-only.

Debits are positive, credits negative; every entry sums to zero per currency. PostgreSQL
enforces it (migration 0002: a deferred constraint trigger per line, append-only triggers
on both tables); ``post_entry`` asks for the check at once (``SET CONSTRAINTS …
IMMEDIATE``) so a bad entry fails where it is written, not at some later commit.

Entries are keyed: posting the same movement twice returns the existing entry. A wrong
entry is never edited: ``reverse_entry`` posts its mirror image.

Accounts (``models.Account``): an invoice finalized debits receivable and credits
revenue (SLA credits debit their contra-revenue account); a payment debits cash at Stripe
and credits receivable; Stripe's fee debits fees and credits cash at Stripe; a credit
note debits its contra-revenue account and credits receivable; a refund debits receivable
and credits cash at Stripe. Settlement: an approved statement debits the partners' share
(cost of revenue) and credits the partner's payable by the statement's own movement
(negative when credit notes outweigh earnings: the payable then carries a debit, the
negative balance brought forward); a payout debits the payable and credits cash at
Stripe.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Sum

from accounts.models import Organization
from billing.models import (
    Account,
    CreditNote,
    EntryKind,
    Invoice,
    JournalEntry,
    JournalLine,
    PaymentAttempt,
)


class UnbalancedEntry(ValueError):
    """The lines given do not sum to zero per currency (checked before the database does)."""


@dataclass(frozen=True)
class Posting:
    account: str
    currency: str
    amount_minor: int
    organization_id: int | None = None


def _check_balanced(postings: Iterable[Posting]) -> None:
    totals: dict[str, int] = defaultdict(int)
    for posting in postings:
        totals[posting.currency] += posting.amount_minor
    unbalanced = {currency: total for currency, total in totals.items() if total}
    if unbalanced:
        raise UnbalancedEntry(f"entry does not balance: {unbalanced}")


def check_deferred_constraints() -> None:
    """Run the deferred balance checks now (they would otherwise wait for the commit)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SET CONSTRAINTS billing_journal_balanced, billing_journal_has_lines IMMEDIATE"
        )
        cursor.execute(
            "SET CONSTRAINTS billing_journal_balanced, billing_journal_has_lines DEFERRED"
        )


@transaction.atomic
def post_entry(
    *,
    kind: str,
    key: str,
    memo: str,
    occurred_at: datetime,
    postings: list[Posting],
    invoice: Invoice | None = None,
    credit_note: CreditNote | None = None,
    payment_attempt: PaymentAttempt | None = None,
    reverses: JournalEntry | None = None,
) -> JournalEntry:
    """Write one balanced entry, or return the one already written under ``key``."""
    existing = JournalEntry.objects.filter(key=key).first()
    if existing is not None:
        return existing
    postings = [posting for posting in postings if posting.amount_minor != 0]
    if not postings:
        raise UnbalancedEntry("an entry needs at least one non-zero line")
    _check_balanced(postings)
    entry = JournalEntry.objects.create(
        kind=kind,
        key=key,
        memo=memo[:300],
        occurred_at=occurred_at,
        invoice=invoice,
        credit_note=credit_note,
        payment_attempt=payment_attempt,
        reverses=reverses,
    )
    JournalLine.objects.bulk_create(
        JournalLine(
            entry=entry,
            account=posting.account,
            currency=posting.currency,
            amount_minor=posting.amount_minor,
            organization_id=posting.organization_id,
        )
        for posting in postings
    )
    check_deferred_constraints()
    return entry


@dataclass(frozen=True)
class EntrySpec:
    """An entry to post in bulk (``post_entries``)."""

    kind: str
    key: str
    memo: str
    occurred_at: datetime
    postings: list[Posting]
    invoice: Invoice | None = None


@transaction.atomic
def post_entries(specs: list[EntrySpec]) -> list[JournalEntry]:
    """Post many new entries in three statements (period close). Every key must be new:
    a duplicate fails the whole batch on the unique key, as it should."""
    specs = [
        EntrySpec(**{**spec.__dict__, "postings": [p for p in spec.postings if p.amount_minor]})
        for spec in specs
    ]
    specs = [spec for spec in specs if spec.postings]
    for spec in specs:
        _check_balanced(spec.postings)
    entries = JournalEntry.objects.bulk_create(
        JournalEntry(
            kind=spec.kind,
            key=spec.key,
            memo=spec.memo[:300],
            occurred_at=spec.occurred_at,
            invoice=spec.invoice,
        )
        for spec in specs
    )
    JournalLine.objects.bulk_create(
        (
            JournalLine(
                entry=entry,
                account=posting.account,
                currency=posting.currency,
                amount_minor=posting.amount_minor,
                organization_id=posting.organization_id,
            )
            for entry, spec in zip(entries, specs, strict=True)
            for posting in spec.postings
        ),
        batch_size=5000,
    )
    check_deferred_constraints()
    return entries


@transaction.atomic
def reverse_entry(*, entry: JournalEntry, memo: str, occurred_at: datetime) -> JournalEntry:
    """Post the mirror image of ``entry`` (each line negated). At most once per entry."""
    postings = [
        Posting(
            account=line.account,
            currency=line.currency,
            amount_minor=-line.amount_minor,
            organization_id=line.organization_id,
        )
        for line in entry.lines.order_by("pk")
    ]
    return post_entry(
        kind=EntryKind.REVERSAL,
        key=f"reversal:{entry.pk}",
        memo=memo,
        occurred_at=occurred_at,
        postings=postings,
        invoice=entry.invoice,
        credit_note=entry.credit_note,
        payment_attempt=entry.payment_attempt,
        reverses=entry,
    )


# -- the movements billing records --------------------------------------------------------


def invoice_finalized_postings(
    *, buyer_id: int, currency: str, charges_minor: int, sla_credits_minor: int
) -> list[Posting]:
    """Receivable = charges - SLA credits; revenue for the charges, contra for the credits."""
    return [
        Posting(Account.RECEIVABLE, currency, charges_minor - sla_credits_minor, buyer_id),
        Posting(Account.REVENUE, currency, -charges_minor),
        Posting(Account.SLA_CREDITS, currency, sla_credits_minor),
    ]


def invoice_finalized_entry(
    *, invoice: Invoice, line_amounts_minor: Iterable[int]
) -> EntrySpec | None:
    """The entry for a finalized invoice; None for an invoice without amounts."""
    amounts = list(line_amounts_minor)
    charges = sum(amount for amount in amounts if amount > 0)
    credits = -sum(amount for amount in amounts if amount < 0)
    if not charges and not credits:
        return None
    assert invoice.finalized_at is not None
    return EntrySpec(
        kind=EntryKind.INVOICE_FINALIZED,
        key=f"invoice_finalized:{invoice.pk}",
        memo=f"Invoice {invoice.number} finalized",
        occurred_at=invoice.finalized_at,
        invoice=invoice,
        postings=invoice_finalized_postings(
            buyer_id=invoice.buyer_id,
            currency=invoice.currency,
            charges_minor=charges,
            sla_credits_minor=credits,
        ),
    )


def record_payment(
    *, attempt: PaymentAttempt, payment_intent_id: str, occurred_at: datetime
) -> JournalEntry:
    invoice = attempt.invoice
    return post_entry(
        kind=EntryKind.PAYMENT,
        key=f"payment:{payment_intent_id}",
        memo=f"Payment of invoice {invoice.number} ({payment_intent_id})",
        occurred_at=occurred_at,
        invoice=invoice,
        payment_attempt=attempt,
        postings=[
            Posting(Account.STRIPE_BALANCE, attempt.currency, attempt.amount_minor),
            Posting(Account.RECEIVABLE, attempt.currency, -attempt.amount_minor, invoice.buyer_id),
        ],
    )


def record_stripe_fee(
    *, attempt: PaymentAttempt, balance_transaction_id: str, fee_minor: int, occurred_at: datetime
) -> JournalEntry | None:
    if fee_minor <= 0:
        return None
    return post_entry(
        kind=EntryKind.STRIPE_FEE,
        key=f"stripe_fee:{balance_transaction_id}",
        memo=f"Stripe fee on invoice {attempt.invoice.number} ({balance_transaction_id})",
        occurred_at=occurred_at,
        invoice=attempt.invoice,
        payment_attempt=attempt,
        postings=[
            Posting(Account.STRIPE_FEES, attempt.currency, fee_minor),
            Posting(Account.STRIPE_BALANCE, attempt.currency, -fee_minor),
        ],
    )


def record_credit_note(*, credit_note: CreditNote) -> JournalEntry:
    invoice = credit_note.invoice
    return post_entry(
        kind=EntryKind.CREDIT_NOTE,
        key=f"credit_note:{credit_note.pk}",
        memo=f"Credit note {credit_note.number} on invoice {invoice.number}",
        occurred_at=credit_note.created_at,
        invoice=invoice,
        credit_note=credit_note,
        postings=[
            Posting(Account.CREDIT_NOTES, credit_note.currency, credit_note.amount_minor),
            Posting(
                Account.RECEIVABLE,
                credit_note.currency,
                -credit_note.amount_minor,
                invoice.buyer_id,
            ),
        ],
    )


def record_refund(
    *, credit_note: CreditNote, refund_id: str, amount_minor: int, occurred_at: datetime
) -> JournalEntry:
    invoice = credit_note.invoice
    return post_entry(
        kind=EntryKind.REFUND,
        key=f"refund:{refund_id}",
        memo=f"Refund for credit note {credit_note.number} ({refund_id})",
        occurred_at=occurred_at,
        invoice=invoice,
        credit_note=credit_note,
        postings=[
            Posting(Account.RECEIVABLE, credit_note.currency, amount_minor, invoice.buyer_id),
            Posting(Account.STRIPE_BALANCE, credit_note.currency, -amount_minor),
        ],
    )


def record_settlement(
    *,
    statement_id: int,
    partner_id: int,
    currency: str,
    net_minor: int,
    memo: str,
    occurred_at: datetime,
) -> JournalEntry | None:
    """An approved statement's earnings and adjustments; None when they net to zero."""
    if net_minor == 0:
        return None
    return post_entry(
        kind=EntryKind.SETTLEMENT,
        key=f"settlement:{statement_id}",
        memo=memo,
        occurred_at=occurred_at,
        postings=[
            Posting(Account.PARTNER_SHARE, currency, net_minor),
            Posting(Account.PARTNER_PAYABLE, currency, -net_minor, partner_id),
        ],
    )


def record_payout(
    *,
    payout_id: int,
    partner_id: int,
    currency: str,
    amount_minor: int,
    memo: str,
    occurred_at: datetime,
) -> JournalEntry:
    """A Connect transfer to a partner: the payable is settled from cash at Stripe."""
    return post_entry(
        kind=EntryKind.PAYOUT,
        key=f"payout:{payout_id}",
        memo=memo,
        occurred_at=occurred_at,
        postings=[
            Posting(Account.PARTNER_PAYABLE, currency, amount_minor, partner_id),
            Posting(Account.STRIPE_BALANCE, currency, -amount_minor),
        ],
    )


# -- reads ----------------------------------------------------------------------------------


def account_balances(*, currency: str | None = None) -> dict[tuple[str, str], int]:
    """Balance of every (account, currency) over the whole journal."""
    lines = JournalLine.objects.all()
    if currency is not None:
        lines = lines.filter(currency=currency)
    rows = lines.values("account", "currency").annotate(total=Sum("amount_minor"))
    return {(row["account"], row["currency"]): int(row["total"]) for row in rows}


def receivable_of(*, organization: Organization, currency: str) -> int:
    total = JournalLine.objects.filter(
        account=Account.RECEIVABLE, currency=currency, organization=organization
    ).aggregate(total=Sum("amount_minor"))["total"]
    return int(total or 0)
