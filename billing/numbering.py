"""Gap-free document numbers: HG-YYYY-NNNNNN for invoices, CN-YYYY-NNNNNN for credit notes.

The counter row of a series and year is locked ``FOR UPDATE`` by the transaction that
issues numbers and released at its commit; a rollback returns the numbers with it. So the
numbers that exist are exactly 1…N, in the order their transactions committed.
"""

from __future__ import annotations

from django.db import transaction

from billing.models import DocumentCounter

INVOICE_SERIES = "HG"
CREDIT_NOTE_SERIES = "CN"


def format_number(series: str, year: int, number: int) -> str:
    return f"{series}-{year:04d}-{number:06d}"


def issue_numbers(*, series: str, year: int, count: int) -> list[str]:
    """The next ``count`` numbers of ``series`` in ``year``. Must run inside the
    transaction that uses them (the counter stays locked until it ends)."""
    if count <= 0:
        return []
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("issue_numbers must run inside the transaction that uses them")
    key = f"{series}-{year:04d}"
    DocumentCounter.objects.bulk_create([DocumentCounter(series=key)], ignore_conflicts=True)
    counter = DocumentCounter.objects.select_for_update().get(series=key)
    first = counter.last_number + 1
    counter.last_number += count
    counter.save(update_fields=["last_number"])
    return [format_number(series, year, number) for number in range(first, first + count)]
