"""manage.py close_period YYYY-MM: draft, finalize and charge every invoice of a month."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.closing import close_period
from billing.periods import parse_month


class Command(BaseCommand):
    help = (
        "Draft the month's invoices, finalize them once the grace window is over, and "
        "charge them. Running it again changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("month", help="calendar month, YYYY-MM (UTC)")
        parser.add_argument(
            "--no-charge", action="store_true", help="draft and finalize only; charge later"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            month = parse_month(options["month"])
        except ValueError:
            raise CommandError("month must be YYYY-MM, e.g. 2026-10") from None

        def progress(step: str, done: int, total: int) -> None:
            # One line per chunk; charges (one per invoice) every 100 and at the end.
            if step != "charged" or done == total or done % 100 == 0:
                self.stdout.write(f"{step:>9}: {done}/{total}")

        try:
            result = close_period(month=month, charge=not options["no_charge"], progress=progress)
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        drafted = result.drafted
        self.stdout.write(
            f"{month:%Y-%m}: drafts created {drafted.created}, updated {drafted.updated}, "
            f"unchanged {drafted.unchanged}, already final {drafted.finalized_untouched}"
        )
        if drafted.failed:
            self.stderr.write(
                f"could not draft {len(drafted.failed)} contracts (see Draft failures in the "
                f"admin): {', '.join(str(pk) for pk in drafted.failed[:20])}"
            )
        if result.finalize_waiting_until is not None:
            self.stdout.write(
                f"finalization waits for the grace window: from "
                f"{result.finalize_waiting_until:%Y-%m-%d %H:%M} UTC"
            )
            return
        self.stdout.write(
            f"finalized {result.finalized}; charged {result.charged}, failed "
            f"{result.charge_failures}, left pending for dunning to send again "
            f"{result.charge_deferred}"
        )
        if result.statements is not None:
            statements = result.statements
            self.stdout.write(
                f"settlement: {statements.invoices_attributed} paid invoices attributed, "
                f"statements created {statements.created}, updated {statements.updated}, "
                f"already approved {statements.frozen}"
            )
