"""manage.py reconcile YYYY-MM: prove ledger = invoices = payments = statements = payouts
(and Stripe's balance transactions) for a month; exit 1 with every difference named."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.periods import parse_month
from billing.reconcile import reconcile_month


class Command(BaseCommand):
    help = (
        "Reconcile a month: ledger, invoices, payments, credit notes, statements, payouts "
        "and Stripe's balance transactions. Exits non-zero when anything differs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("month", help="calendar month, YYYY-MM (UTC)")
        parser.add_argument(
            "--no-stripe", action="store_true", help="skip the comparison with Stripe"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            month = parse_month(options["month"])
        except ValueError:
            raise CommandError("month must be YYYY-MM, e.g. 2026-10") from None
        report = reconcile_month(month=month, include_stripe=not options["no_stripe"])
        for line in report.lines():
            self.stdout.write(line)
        if not report.is_clean:
            raise CommandError(
                f"{len(report.differences)} difference(s) in {month:%Y-%m}: see the report above."
            )
