"""Reconciliation: proof, for one month, that the books agree with themselves and Stripe.

"The month" is the invoices of that billing month (with their payments, credit notes and
refunds, whenever those happened), the settlement statements of that month and their
payouts. Every check names what it compared; every difference says what was expected
and what was found, so the report can be read by finance without the code:

1. every journal entry balances per currency (the database already refuses otherwise);
2. invoices = ledger: each finalized invoice's entry carries its charges, SLA credits and
   receivable, and its total is the sum of its lines;
3. payments = ledger = invoices: each succeeded attempt has its payment entry (and its
   Stripe fee entry), and the invoice's amount paid is their sum;
4. credit notes and refunds = ledger = invoices;
5. receivables: the ledger's receivable of each invoice is what the invoice says is due;
6. attribution: each attributed line's parts add up to it, each paid invoice settled so
   far is attributed, each credit note on an attributed invoice is adjusted in full;
7. statements = attributions + adjustments, carried balances chain, approved statements
   are in the ledger;
8. payouts = statements = ledger, and each partner's payable is what the statements and
   payouts leave;
9. Stripe: each payout's transfer is in Stripe's balance transactions with its amount,
   and every transfer Stripe lists since the month began is a payout we know.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.db.models import Max, Q, Sum
from django.utils import timezone

from billing import stripe_gateway
from billing.models import (
    Account,
    AttemptStatus,
    Attribution,
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    JournalEntry,
    JournalLine,
    PaymentAttempt,
    PaymentStatus,
    Payout,
    PayoutStatus,
    RefundStatus,
    SettlementStatement,
    StatementAdjustment,
    StatementStatus,
)
from billing.money import format_money
from billing.periods import month_bounds


@dataclass(frozen=True)
class Difference:
    check: str
    subject: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.subject}: expected {self.expected}, found {self.found}"


@dataclass
class ReconcileReport:
    month: date
    # (check, how many things it compared)
    checks: list[tuple[str, int]] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    # Why the Stripe check did not run ("" when it did).
    stripe_skipped: str = ""

    @property
    def is_clean(self) -> bool:
        return not self.differences

    def lines(self) -> list[str]:
        out = [f"Reconciliation of {self.month:%Y-%m}"]
        for check, count in self.checks:
            out.append(f"  {check}: {count} compared")
        if self.stripe_skipped:
            out.append(f"  stripe: skipped ({self.stripe_skipped})")
        if self.differences:
            out.append(f"{len(self.differences)} difference(s):")
            out += [f"  - {difference}" for difference in self.differences]
        else:
            out.append("No differences: ledger = invoices = payments = statements = payouts.")
        return out


class _Checker:
    def __init__(self, month: date) -> None:
        self.report = ReconcileReport(month=month)

    def count(self, check: str, compared: int) -> None:
        self.report.checks.append((check, compared))

    def expect(self, check: str, subject: str, expected: int, found: int, currency: str) -> None:
        if expected != found:
            self.report.differences.append(
                Difference(
                    check, subject, format_money(expected, currency), format_money(found, currency)
                )
            )

    def missing(self, check: str, subject: str, expected: str, found: str = "nothing") -> None:
        self.report.differences.append(Difference(check, subject, expected, found))


def _entry_amounts(keys: list[str]) -> dict[str, dict[tuple[str, int | None], int]]:
    """Per entry key: amount per (account, organization)."""
    amounts: dict[str, dict[tuple[str, int | None], int]] = defaultdict(lambda: defaultdict(int))
    for key, account, organization_id, amount in JournalLine.objects.filter(
        entry__key__in=keys
    ).values_list("entry__key", "account", "organization_id", "amount_minor"):
        amounts[key][(account, organization_id)] += amount
    return amounts


def _account_total(amounts: dict[tuple[str, int | None], int], account: str) -> int:
    return sum(value for (name, _), value in amounts.items() if name == account)


# The steps reconcile_month reports to ``progress``: the nine checks above (Stripe's counts
# as done when skipped).
CHECK_COUNT = 9

Progress = Callable[[int, int], None]


def reconcile_month(
    *, month: date, include_stripe: bool = True, progress: Progress | None = None
) -> ReconcileReport:
    """Run every check on ``month``; ``progress(done, CHECK_COUNT)`` after each one (what
    the admin's progress bar shows)."""
    checker = _Checker(month)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, CHECK_COUNT)

    invoices = list(
        Invoice.objects.filter(month=month, status=InvoiceStatus.FINALIZED)
        .select_related("buyer")
        .order_by("pk")
    )
    _check_journal_balanced(checker)
    step()
    _check_invoices(checker, invoices)
    step()
    _check_payments(checker, invoices)
    step()
    _check_credit_notes(checker, invoices)
    _check_receivables(checker, invoices)
    step()
    statements = list(
        SettlementStatement.objects.filter(month=month).select_related("partner").order_by("pk")
    )
    _check_attribution(checker, invoices, statements)
    step()
    _check_statements(checker, statements)
    step()
    payouts = _check_payouts(checker, statements)
    step()
    _check_payables(checker)
    step()
    if include_stripe:
        _check_stripe(checker, month, payouts)
    else:
        checker.report.stripe_skipped = "not asked"
    step()
    return checker.report


def _check_journal_balanced(checker: _Checker) -> None:
    unbalanced = (
        JournalLine.objects.values("entry_id", "currency")
        .annotate(total=Sum("amount_minor"))
        .exclude(total=0)
    )
    for row in unbalanced:
        checker.expect(
            "ledger", f"journal entry #{row['entry_id']}", 0, int(row["total"]), row["currency"]
        )
    checker.count("ledger entries balance", JournalEntry.objects.count())


def _check_invoices(checker: _Checker, invoices: list[Invoice]) -> None:
    lines: dict[int, list[int]] = defaultdict(list)
    for invoice_id, amount in InvoiceLine.objects.filter(invoice__in=invoices).values_list(
        "invoice_id", "amount_minor"
    ):
        lines[invoice_id].append(amount)
    entries = _entry_amounts([f"invoice_finalized:{invoice.pk}" for invoice in invoices])
    for invoice in invoices:
        amounts = lines[invoice.pk]
        checker.expect(
            "invoices",
            f"invoice {invoice} total vs its lines",
            sum(amounts),
            invoice.total_minor,
            invoice.currency,
        )
        charges = sum(a for a in amounts if a > 0)
        credits = -sum(a for a in amounts if a < 0)
        key = f"invoice_finalized:{invoice.pk}"
        if not charges and not credits:
            continue
        if key not in entries:
            checker.missing(
                "invoices = ledger",
                f"invoice {invoice}",
                f"an 'invoice finalized' entry of {format_money(charges, invoice.currency)}",
            )
            continue
        entry = entries[key]
        subject = f"invoice {invoice} in the ledger"
        checker.expect(
            "invoices = ledger",
            f"{subject}: revenue",
            -charges,
            _account_total(entry, Account.REVENUE),
            invoice.currency,
        )
        checker.expect(
            "invoices = ledger",
            f"{subject}: SLA credits",
            credits,
            _account_total(entry, Account.SLA_CREDITS),
            invoice.currency,
        )
        checker.expect(
            "invoices = ledger",
            f"{subject}: receivable",
            charges - credits,
            _account_total(entry, Account.RECEIVABLE),
            invoice.currency,
        )
    checker.count("invoices = ledger", len(invoices))


def _check_payments(checker: _Checker, invoices: list[Invoice]) -> None:
    attempts = list(
        PaymentAttempt.objects.filter(invoice__in=invoices, status=AttemptStatus.SUCCEEDED)
        .select_related("invoice")
        .order_by("pk")
    )
    paid: dict[int, int] = defaultdict(int)
    for attempt in attempts:
        paid[attempt.invoice_id] += attempt.amount_minor
    keys = [f"payment:{a.stripe_payment_intent_id}" for a in attempts]
    keys += list(
        JournalEntry.objects.filter(payment_attempt__in=attempts, kind="stripe_fee").values_list(
            "key", flat=True
        )
    )
    entries = _entry_amounts(keys)
    fee_entries: dict[int, int] = defaultdict(int)
    for attempt_id, amount in JournalLine.objects.filter(
        entry__payment_attempt__in=attempts, entry__kind="stripe_fee", account=Account.STRIPE_FEES
    ).values_list("entry__payment_attempt_id", "amount_minor"):
        fee_entries[attempt_id] += amount
    for attempt in attempts:
        key = f"payment:{attempt.stripe_payment_intent_id}"
        subject = f"payment {attempt.stripe_payment_intent_id} of invoice {attempt.invoice}"
        if key not in entries:
            checker.missing(
                "payments = ledger",
                subject,
                f"a payment entry of {format_money(attempt.amount_minor, attempt.currency)}",
            )
        else:
            checker.expect(
                "payments = ledger",
                subject,
                attempt.amount_minor,
                _account_total(entries[key], Account.STRIPE_BALANCE),
                attempt.currency,
            )
        checker.expect(
            "payments = ledger",
            f"{subject}: Stripe fee",
            attempt.fee_minor or 0,
            fee_entries.get(attempt.pk, 0),
            attempt.currency,
        )
    for invoice in invoices:
        checker.expect(
            "payments = invoices",
            f"invoice {invoice}: amount paid",
            paid.get(invoice.pk, 0),
            invoice.amount_paid_minor,
            invoice.currency,
        )
    checker.count("payments = ledger = invoices", len(attempts))


def _check_credit_notes(checker: _Checker, invoices: list[Invoice]) -> None:
    notes = list(CreditNote.objects.filter(invoice__in=invoices).select_related("invoice"))
    keys = [f"credit_note:{note.pk}" for note in notes] + [
        f"refund:{note.stripe_refund_id}"
        for note in notes
        if note.refund_status == RefundStatus.SUCCEEDED
    ]
    entries = _entry_amounts(keys)
    credited: dict[int, int] = defaultdict(int)
    refunded: dict[int, int] = defaultdict(int)
    for note in notes:
        credited[note.invoice_id] += note.amount_minor
        key = f"credit_note:{note.pk}"
        if key not in entries:
            checker.missing(
                "credit notes = ledger",
                f"credit note {note}",
                f"a credit-note entry of {format_money(note.amount_minor, note.currency)}",
            )
        else:
            checker.expect(
                "credit notes = ledger",
                f"credit note {note}",
                note.amount_minor,
                _account_total(entries[key], Account.CREDIT_NOTES),
                note.currency,
            )
        if note.refund_status == RefundStatus.SUCCEEDED:
            refunded[note.invoice_id] += note.refund_amount_minor
            key = f"refund:{note.stripe_refund_id}"
            checker.expect(
                "refunds = ledger",
                f"refund {note.stripe_refund_id} of {note}",
                note.refund_amount_minor,
                -_account_total(entries.get(key, {}), Account.STRIPE_BALANCE),
                note.currency,
            )
    for invoice in invoices:
        checker.expect(
            "credit notes = invoices",
            f"invoice {invoice}: amount credited",
            credited.get(invoice.pk, 0),
            invoice.amount_credited_minor,
            invoice.currency,
        )
        checker.expect(
            "refunds = invoices",
            f"invoice {invoice}: amount refunded",
            refunded.get(invoice.pk, 0),
            invoice.amount_refunded_minor,
            invoice.currency,
        )
    checker.count("credit notes and refunds = ledger = invoices", len(notes))


def _check_receivables(checker: _Checker, invoices: list[Invoice]) -> None:
    receivable = dict(
        JournalLine.objects.filter(entry__invoice__in=invoices, account=Account.RECEIVABLE)
        .values("entry__invoice_id")
        .annotate(total=Sum("amount_minor"))
        .values_list("entry__invoice_id", "total")
    )
    for invoice in invoices:
        checker.expect(
            "receivables",
            f"invoice {invoice}: due",
            invoice.amount_due_minor,
            int(receivable.get(invoice.pk, 0) or 0),
            invoice.currency,
        )
    checker.count("receivables = amounts due", len(invoices))


def _check_attribution(
    checker: _Checker, invoices: list[Invoice], statements: list[SettlementStatement]
) -> None:
    settled_until: datetime | None = (
        max(statement.drafted_at for statement in statements) if statements else None
    )
    attributed: dict[int, int] = defaultdict(int)
    attributed_invoices: set[int] = set()
    for line_id, invoice_id, amount in Attribution.objects.filter(invoice__in=invoices).values_list(
        "invoice_line_id", "invoice_id", "amount_minor"
    ):
        attributed[line_id] += amount
        attributed_invoices.add(invoice_id)
    by_invoice = {invoice.pk: invoice for invoice in invoices}
    for line_id, invoice_id, amount in InvoiceLine.objects.filter(
        invoice_id__in=attributed_invoices
    ).values_list("pk", "invoice_id", "amount_minor"):
        invoice = by_invoice[invoice_id]
        checker.expect(
            "attribution",
            f"line {line_id} of invoice {invoice}: shares + fees",
            amount,
            attributed.get(line_id, 0),
            invoice.currency,
        )
    for invoice in invoices:
        if (
            invoice.payment_status == PaymentStatus.PAID
            and invoice.pk not in attributed_invoices
            and settled_until is not None
            and invoice.paid_at is not None
            and invoice.paid_at <= settled_until
        ):
            checker.missing(
                "attribution",
                f"paid invoice {invoice}",
                "attributions (it was paid before the statements were drafted)",
            )
    notes = list(
        CreditNote.objects.filter(invoice_id__in=attributed_invoices).select_related("invoice")
    )
    adjusted = dict(
        StatementAdjustment.objects.filter(credit_note__in=notes)
        .values("credit_note_id")
        .annotate(total=Sum("amount_minor"))
        .values_list("credit_note_id", "total")
    )
    for note in notes:
        if note.pk not in adjusted and (settled_until is None or note.created_at > settled_until):
            continue  # comes on the next statement
        checker.expect(
            "attribution",
            f"credit note {note}: adjustments",
            -note.amount_minor,
            int(adjusted.get(note.pk, 0) or 0),
            note.currency,
        )
    checker.count("paid lines = partner shares + platform fees", len(attributed))


def _check_statements(checker: _Checker, statements: list[SettlementStatement]) -> None:
    earnings = dict(
        Attribution.objects.filter(statement__in=statements)
        .values("statement_id")
        .annotate(total=Sum("partner_share_minor"))
        .values_list("statement_id", "total")
    )
    adjustments = dict(
        StatementAdjustment.objects.filter(statement__in=statements)
        .values("statement_id")
        .annotate(total=Sum("partner_share_minor"))
        .values_list("statement_id", "total")
    )
    entries = _entry_amounts([f"settlement:{statement.pk}" for statement in statements])
    for statement in statements:
        subject = f"statement {statement.reference} ({statement.partner})"
        currency = statement.currency
        checker.expect(
            "statements",
            f"{subject}: earnings",
            int(earnings.get(statement.pk, 0) or 0),
            statement.earnings_minor,
            currency,
        )
        checker.expect(
            "statements",
            f"{subject}: adjustments",
            int(adjustments.get(statement.pk, 0) or 0),
            statement.adjustments_minor,
            currency,
        )
        previous = (
            SettlementStatement.objects.filter(
                partner_id=statement.partner_id, currency=currency, month__lt=statement.month
            )
            .order_by("-month")
            .first()
        )
        checker.expect(
            "statements",
            f"{subject}: balance carried in",
            previous.carried_out_minor if previous else 0,
            statement.carried_in_minor,
            currency,
        )
        if statement.status == StatementStatus.DRAFT:
            continue
        entry = entries.get(f"settlement:{statement.pk}", {})
        if statement.net_minor and not entry:
            checker.missing(
                "statements = ledger",
                subject,
                f"a settlement entry of {format_money(statement.net_minor, currency)}",
            )
            continue
        checker.expect(
            "statements = ledger",
            subject,
            -statement.net_minor,
            _account_total(entry, Account.PARTNER_PAYABLE),
            currency,
        )
    checker.count("statements = attributions = ledger", len(statements))


def _check_payouts(checker: _Checker, statements: list[SettlementStatement]) -> list[Payout]:
    payouts = {
        payout.statement_id: payout
        for payout in Payout.objects.filter(statement__in=statements).select_related("statement")
    }
    entries = _entry_amounts([f"payout:{payout.pk}" for payout in payouts.values()])
    for statement in statements:
        subject = f"statement {statement.reference} ({statement.partner})"
        payout = payouts.get(statement.pk)
        transferred = payout is not None and payout.status == PayoutStatus.PAID
        if (
            statement.status == StatementStatus.PAID
            and statement.payout_minor > 0
            and not transferred
        ):
            checker.missing(
                "payouts = statements",
                subject,
                f"a transferred payout of {format_money(statement.payout_minor, statement.currency)}",
                "no transferred payout",
            )
            continue
        if payout is None:
            continue
        checker.expect(
            "payouts = statements",
            f"payout of {subject}",
            statement.payout_minor,
            payout.amount_minor,
            statement.currency,
        )
        if payout.status == PayoutStatus.PAID:
            checker.expect(
                "payouts = ledger",
                f"payout {payout.stripe_transfer_id} of {subject}",
                payout.amount_minor,
                _account_total(entries.get(f"payout:{payout.pk}", {}), Account.PARTNER_PAYABLE),
                payout.currency,
            )
    checker.count("payouts = statements = ledger", len(payouts))
    return [payout for payout in payouts.values() if payout.status == PayoutStatus.PAID]


def _check_payables(checker: _Checker) -> None:
    """Each partner's payable = -(settled statements' movements) + transferred payouts."""
    expected: dict[tuple[int, str], int] = defaultdict(int)
    for partner_id, currency, net in (
        SettlementStatement.objects.exclude(status=StatementStatus.DRAFT)
        .values("partner_id", "currency")
        .annotate(net=Sum("earnings_minor") + Sum("adjustments_minor"))
        .values_list("partner_id", "currency", "net")
    ):
        expected[(partner_id, currency)] -= int(net or 0)
    for partner_id, currency, amount in (
        Payout.objects.filter(status=PayoutStatus.PAID)
        .values("partner_id", "currency")
        .annotate(total=Sum("amount_minor"))
        .values_list("partner_id", "currency", "total")
    ):
        expected[(partner_id, currency)] += int(amount or 0)
    found: dict[tuple[int, str], int] = {
        (row["organization_id"], row["currency"]): int(row["total"])
        for row in JournalLine.objects.filter(account=Account.PARTNER_PAYABLE)
        .values("organization_id", "currency")
        .annotate(total=Sum("amount_minor"))
    }
    for key in sorted(set(expected) | set(found), key=lambda k: (k[0] or 0, k[1])):
        checker.expect(
            "payables",
            f"partner #{key[0]} payable ({key[1]})",
            expected.get(key, 0),
            found.get(key, 0),
            key[1],
        )
    checker.count("partner payables = statements - payouts", len(expected))


def _check_stripe(checker: _Checker, month: date, payouts: list[Payout]) -> None:
    start = month_bounds(month)[0]
    until = timezone.now()
    latest = Payout.objects.aggregate(latest=Max("paid_at"))["latest"]
    if latest is not None and latest >= until:
        until = latest
    try:
        transactions = stripe_gateway.list_balance_transactions(
            created_from=start,
            created_until=until.replace(microsecond=0) + timedelta(seconds=1),
            type="transfer",
        )
    except stripe_gateway.StripeGatewayError as error:
        checker.report.stripe_skipped = ""
        checker.missing("stripe", "balance transactions", "a listing from Stripe", str(error))
        return
    by_source = {txn.source_id: txn for txn in transactions}
    for payout in payouts:
        txn = by_source.get(payout.stripe_transfer_id or "")
        subject = f"transfer {payout.stripe_transfer_id} (statement {payout.statement.reference})"
        if txn is None:
            checker.missing(
                "stripe",
                subject,
                f"a balance transaction of {format_money(-payout.amount_minor, payout.currency)}",
            )
            continue
        checker.expect("stripe", subject, -payout.amount_minor, txn.amount_minor, payout.currency)
    known = set(
        Payout.objects.filter(~Q(stripe_transfer_id=None)).values_list(
            "stripe_transfer_id", flat=True
        )
    )
    for txn in transactions:
        if txn.source_id not in known:
            checker.missing(
                "stripe",
                f"Stripe transfer {txn.source_id} ({txn.id})",
                "a payout of ours",
                format_money(txn.amount_minor, txn.currency),
            )
    checker.count("Stripe transfers = payouts", len(transactions))
