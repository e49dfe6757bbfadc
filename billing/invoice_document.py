"""An invoice as a document: the rows and totals its page, its printable version and its
PDF all show, built once so they cannot disagree.

Every figure is already text (money by ``format_money``, quantities and unit prices as
plain decimals without trailing zeros or exponents). ``billing.invoice_pdf`` lays the
same document out as a PDF; the invoice page renders it as HTML.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.models import Invoice, InvoiceLine, InvoiceStatus
from billing.money import format_money
from config.formats import utc_date


@dataclass(frozen=True)
class DocumentLine:
    description: str
    is_late_usage: bool
    quantity: str  # "744 GPU-hours"; "" when the line has no quantity
    unit_price: str  # "2.1"; "" when the line has none
    amount: str  # "$1,562.40"


@dataclass(frozen=True)
class DocumentTotal:
    label: str
    amount: str
    # The total and the amount due stand out; adjustments do not.
    is_strong: bool


@dataclass(frozen=True)
class InvoiceDocument:
    title: str  # "Invoice HG-2026-000012" or "Draft invoice"
    is_draft: bool
    buyer_name: str
    contract_reference: str
    period: str  # "March 2026"
    issued: str  # "2026-04-01" (config.formats, as on every page); "" while a draft
    # When the figures were fixed (finalized, else drafted): the PDF's creation date.
    dated: datetime
    currency: str
    lines: list[DocumentLine]
    totals: list[DocumentTotal]


def plain_decimal(value: Decimal) -> str:
    """``Decimal("744.000000000")`` → ``"744"``, ``Decimal("0.0500")`` → ``"0.05"``: no
    trailing zeros and never an exponent (``normalize`` alone writes 100 as ``1E+2``)."""
    return format(value.normalize(), "f")


def invoice_document(*, invoice: Invoice, lines: list[InvoiceLine]) -> InvoiceDocument:
    """``invoice`` with ``lines`` (its lines in position order) as a document."""
    currency = invoice.currency

    def money(amount_minor: int) -> str:
        return format_money(amount_minor, currency)

    totals = [DocumentTotal("Total", money(invoice.total_minor), is_strong=True)]
    if invoice.amount_credited_minor:
        totals.append(DocumentTotal("Credit notes", money(-invoice.amount_credited_minor), False))
    if invoice.amount_paid_minor:
        totals.append(DocumentTotal("Paid", money(-invoice.amount_paid_minor), False))
    if invoice.amount_refunded_minor:
        totals.append(DocumentTotal("Refunded", money(invoice.amount_refunded_minor), False))
    if invoice.status == InvoiceStatus.FINALIZED:
        totals.append(DocumentTotal("Amount due", money(invoice.amount_due_minor), True))
    return InvoiceDocument(
        title=f"Invoice {invoice.number}" if invoice.number else "Draft invoice",
        is_draft=invoice.status == InvoiceStatus.DRAFT,
        buyer_name=invoice.buyer.name,
        contract_reference=invoice.contract.reference,
        period=f"{invoice.month:%B %Y}",
        issued=utc_date(invoice.finalized_at) if invoice.finalized_at else "",
        dated=invoice.finalized_at or invoice.drafted_at,
        currency=currency,
        lines=[
            DocumentLine(
                description=line.description,
                is_late_usage=line.is_late_usage,
                quantity=(
                    f"{plain_decimal(line.quantity)} {line.unit}".strip()
                    if line.quantity is not None
                    else ""
                ),
                unit_price=plain_decimal(line.unit_price) if line.unit_price is not None else "",
                amount=money(line.amount_minor),
            )
            for line in lines
        ],
        totals=totals,
    )
