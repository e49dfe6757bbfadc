"""Invoices: drafted when a month ends, finalized after the grace window.

``draft_invoices`` rates the month (``billing.rating``) and writes one draft per
contract and month (``UNIQUE (contract, month)``): a draft's lines are replaced only when
the rating changed, and a finalized invoice is never touched, so running it again
changes nothing. ``finalize_invoices`` numbers the drafts gap-free, freezes them (the
database refuses later edits), posts their ledger entries, and hands the ones with
money due to payments on commit. Both work in chunks of contracts, one transaction per
chunk, and report progress.

One contract's bad data never stops another's invoice: a chunk whose drafting fails for
a reason in the data (a value out of range, a constraint, arithmetic) is drafted again
contract by contract, each in its own transaction; a contract that still fails is
logged and recorded as a ``DraftFailure`` for finance, and its invoice is not finalized
until a later draft succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.audit import audit
from billing import ledger
from billing.models import DraftFailure, Invoice, InvoiceLine, InvoiceStatus, PaymentStatus
from billing.numbering import INVOICE_SERIES, issue_numbers
from billing.periods import finalizable_at, month_bounds
from billing.rating import RatedLine, billable_contracts, rate_month
from contracts.models import Contract

CHUNK_SIZE = 1000
Progress = Callable[[str, int, int], None]
# Failures of one contract's drafting that its data causes; anything else (the database
# gone, a bug) still fails the run.
DRAFT_DATA_ERRORS = (DataError, IntegrityError, ArithmeticError, ValueError)

logger = logging.getLogger(__name__)


@dataclass
class DraftResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    finalized_untouched: int = 0
    # Contracts whose invoice could not be drafted (recorded as ``DraftFailure``).
    failed: list[int] = field(default_factory=list)

    def add(self, other: DraftResult) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.finalized_untouched += other.finalized_untouched
        self.failed += other.failed


@dataclass
class FinalizeResult:
    finalized: int = 0
    numbers: list[str] = field(default_factory=list)
    # Finalized invoices with money due, for payments to charge.
    payable_invoice_ids: list[int] = field(default_factory=list)


def _line_signature(lines: Iterable[InvoiceLine]) -> list[tuple[object, ...]]:
    return [
        (
            line.kind,
            line.contract_line_id,
            line.description,
            line.service_month,
            line.quantity,
            line.unit,
            line.unit_price,
            line.meter,
            line.metered_quantity,
            line.amount_minor,
        )
        for line in lines
    ]


def _build_lines(invoice: Invoice, rated: list[RatedLine]) -> list[InvoiceLine]:
    return [
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=line.kind,
            contract_line_id=line.contract_line_id,
            description=line.description[:300],
            service_month=line.service_month,
            quantity=line.quantity,
            unit=line.unit,
            unit_price=line.unit_price,
            meter=line.meter,
            metered_quantity=line.metered_quantity,
            amount_minor=line.amount_minor,
        )
        for position, line in enumerate(rated, start=1)
    ]


def _contract_chunks(month: date, contract_ids: list[int] | None) -> list[list[int]]:
    contracts = Contract.objects.filter(billable_contracts(month=month))
    if contract_ids is not None:
        contracts = contracts.filter(pk__in=contract_ids)
    ids = list(contracts.order_by("pk").values_list("pk", flat=True))
    return [ids[i : i + CHUNK_SIZE] for i in range(0, len(ids), CHUNK_SIZE)]


@transaction.atomic
def _draft_chunk(*, month: date, contract_ids: list[int], now: datetime) -> DraftResult:
    result = DraftResult()
    rated = rate_month(month=month, contract_ids=contract_ids)
    contracts = Contract.objects.in_bulk(list(rated))
    existed = set(
        Invoice.objects.filter(contract_id__in=list(rated), month=month).values_list(
            "contract_id", flat=True
        )
    )
    Invoice.objects.bulk_create(
        [
            Invoice(
                contract_id=pk,
                buyer_id=contracts[pk].buyer_id,
                month=month,
                currency=contracts[pk].currency,
                drafted_at=now,
            )
            for pk in rated
        ],
        ignore_conflicts=True,
    )
    invoices = {
        invoice.contract_id: invoice
        for invoice in Invoice.objects.select_for_update()
        .filter(contract_id__in=list(rated), month=month)
        .order_by("pk")
    }
    drafts = [invoice for invoice in invoices.values() if invoice.status == InvoiceStatus.DRAFT]
    existing: dict[int, list[InvoiceLine]] = {invoice.pk: [] for invoice in drafts}
    for line in InvoiceLine.objects.filter(invoice__in=drafts).order_by("invoice_id", "position"):
        existing[line.invoice_id].append(line)
    replace: list[Invoice] = []
    new_lines: list[InvoiceLine] = []
    for contract_id, invoice in invoices.items():
        if invoice.status != InvoiceStatus.DRAFT:
            result.finalized_untouched += 1
            continue
        lines = _build_lines(invoice, rated[contract_id])
        is_new = contract_id not in existed
        if _line_signature(lines) == _line_signature(existing[invoice.pk]):
            if is_new:
                result.created += 1
            else:
                result.unchanged += 1
            continue
        if is_new:
            result.created += 1
        else:
            result.updated += 1
        invoice.total_minor = sum(line.amount_minor for line in lines)
        invoice.drafted_at = now
        replace.append(invoice)
        new_lines += lines
    if replace:
        InvoiceLine.objects.filter(invoice__in=replace).delete()
        InvoiceLine.objects.bulk_create(new_lines, batch_size=5000)
        Invoice.objects.bulk_update(replace, ["total_minor", "drafted_at"], batch_size=2000)
    DraftFailure.objects.filter(contract_id__in=contract_ids, month=month).delete()
    return result


def _draft_each(*, month: date, contract_ids: list[int], now: datetime) -> DraftResult:
    """Draft a chunk that failed one contract at a time, so only the contracts whose own
    data fails are left out; record each of those for finance."""
    result = DraftResult()
    for contract_id in contract_ids:
        try:
            result.add(_draft_chunk(month=month, contract_ids=[contract_id], now=now))
        except DRAFT_DATA_ERRORS as error:
            logger.exception("drafting the %s invoice of contract %s failed", month, contract_id)
            _record_failure(contract_id=contract_id, month=month, error=error, now=now)
            result.failed.append(contract_id)
    return result


@transaction.atomic
def _record_failure(*, contract_id: int, month: date, error: Exception, now: datetime) -> None:
    """The failure as a ``DraftFailure`` (what finalization checks; the admin lists it)
    and in the audit trail, which finance reads, under the buyer."""
    detail = f"{type(error).__name__}: {error}"[:2000]
    updated = DraftFailure.objects.filter(contract_id=contract_id, month=month).update(
        error=detail, failed_at=now, attempts=F("attempts") + 1
    )
    if not updated:
        DraftFailure.objects.create(
            contract_id=contract_id, month=month, error=detail, failed_at=now
        )
    contract = Contract.objects.select_related("buyer").get(pk=contract_id)
    audit(
        action="billing.invoice_draft_failed",
        actor=None,
        organization=contract.buyer,
        target=contract,
        month=f"{month:%Y-%m}",
        error=detail,
    )


def draft_invoices(
    *,
    month: date,
    contract_ids: list[int] | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> DraftResult:
    """Draft (or re-draft) the month's invoices. Refused before the month has ended.

    A contract whose drafting fails on its data is left out and recorded
    (``DraftResult.failed``, ``DraftFailure``); every other contract is drafted."""
    now = now or timezone.now()
    if now < month_bounds(month)[1]:
        raise ValidationError(f"{month:%B %Y} has not ended yet.", code="month_not_ended")
    chunks = _contract_chunks(month, contract_ids)
    total = sum(len(chunk) for chunk in chunks)
    result = DraftResult()
    done = 0
    for chunk in chunks:
        try:
            result.add(_draft_chunk(month=month, contract_ids=chunk, now=now))
        except DRAFT_DATA_ERRORS:
            result.add(_draft_each(month=month, contract_ids=chunk, now=now))
        done += len(chunk)
        if progress is not None:
            progress("drafted", done, total)
    return result


@transaction.atomic
def _finalize_chunk(*, month: date, contract_ids: list[int], now: datetime) -> FinalizeResult:
    # A contract whose last drafting failed keeps a stale draft (or none): not finalized.
    drafts = list(
        Invoice.objects.select_for_update()
        .filter(contract_id__in=contract_ids, month=month, status=InvoiceStatus.DRAFT)
        .exclude(contract__draft_failures__month=month)
        .order_by("pk")
    )
    result = FinalizeResult()
    if not drafts:
        return result
    numbers = issue_numbers(series=INVOICE_SERIES, year=now.year, count=len(drafts))
    for invoice, number in zip(drafts, numbers, strict=True):
        invoice.status = InvoiceStatus.FINALIZED
        invoice.number = number
        invoice.finalized_at = now
        invoice.payment_status = (
            PaymentStatus.UNPAID if invoice.total_minor > 0 else PaymentStatus.NOTHING_DUE
        )
        if invoice.total_minor > 0:
            result.payable_invoice_ids.append(invoice.pk)
    Invoice.objects.bulk_update(
        drafts, ["status", "number", "finalized_at", "payment_status"], batch_size=2000
    )
    amounts: dict[int, list[int]] = {invoice.pk: [] for invoice in drafts}
    for invoice_id, amount in InvoiceLine.objects.filter(invoice__in=drafts).values_list(
        "invoice_id", "amount_minor"
    ):
        amounts[invoice_id].append(amount)
    specs = [
        spec
        for invoice in drafts
        if (
            spec := ledger.invoice_finalized_entry(
                invoice=invoice, line_amounts_minor=amounts[invoice.pk]
            )
        )
        is not None
    ]
    ledger.post_entries(specs)
    result.finalized = len(drafts)
    result.numbers = numbers
    return result


def finalize_invoices(
    *,
    month: date,
    contract_ids: list[int] | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
    on_finalized: Callable[[list[int]], None] | None = None,
) -> FinalizeResult:
    """Finalize the month's drafts, once the grace window is over.

    ``on_finalized`` gets each chunk's payable invoice ids after that chunk commits.
    """
    now = now or timezone.now()
    if now < finalizable_at(month):
        raise ValidationError(
            f"Invoices for {month:%B %Y} can be finalized from "
            f"{finalizable_at(month):%Y-%m-%d %H:%M} UTC (grace window for late usage).",
            code="grace_window",
        )
    chunks = _contract_chunks(month, contract_ids)
    total = sum(len(chunk) for chunk in chunks)
    result = FinalizeResult()
    done = 0
    for chunk in chunks:
        chunk_result = _finalize_chunk(month=month, contract_ids=chunk, now=now)
        result.finalized += chunk_result.finalized
        result.numbers += chunk_result.numbers
        result.payable_invoice_ids += chunk_result.payable_invoice_ids
        if on_finalized is not None and chunk_result.payable_invoice_ids:
            on_finalized(chunk_result.payable_invoice_ids)
        done += len(chunk)
        if progress is not None:
            progress("finalized", done, total)
    return result
