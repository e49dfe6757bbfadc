"""Issue 16, point 6: the invoice as PDF has the same lines and totals as the invoice
page, character for character."""

from __future__ import annotations

import io
import re
from datetime import UTC, date, datetime
from decimal import Decimal

import pypdf
import pytest
import time_machine
from django.urls import reverse

from billing.invoice_pdf import COLUMNS_MM, MARGIN_MM
from billing.invoices import draft_invoices, finalize_invoices
from billing.models import Invoice
from contracts import checkout
from tests.factories import OfferFactory, SiteFactory, gpu_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def invoice(buyer_org, partner_org, settings):
    """October 2026: 2 reserved GPUs for the whole month at 2.10 (1,488 GPU-hours), no
    availability measured (the SLA's 50 % credit), a commitment of 5,000.00 (a true-up
    line for the shortfall); finalized on 4 November."""
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    site = SiteFactory(organization=partner_org, name="Permian Flare 1")
    gpu_pool(site=site, gpus=2)
    offer = OfferFactory(
        site=site,
        gpu_count=2,
        available_from=datetime(2026, 9, 1, tzinfo=UTC),
        reserved_price_1m_per_gpu_hour=Decimal("2.1000"),
    )
    with time_machine.travel(datetime(2026, 9, 30, 12, tzinfo=UTC), tick=False):
        done = checkout.reservation_checkout(
            buyer=buyer_org,
            offer=offer,
            gpu_count=2,
            starts_at=datetime(2026, 10, 1, tzinfo=UTC),
            term_months=1,
            actor=None,
        )
    contract = done.contract
    contract.monthly_commitment_minor = 500_000
    contract.save(update_fields=["monthly_commitment_minor"])
    with time_machine.travel(datetime(2026, 11, 4, tzinfo=UTC), tick=False):
        draft_invoices(month=date(2026, 10, 1), contract_ids=[contract.pk])
        finalize_invoices(month=date(2026, 10, 1), contract_ids=[contract.pk])
    return Invoice.objects.get(contract=contract)


def _cells(html: str) -> list[str]:
    return [
        " ".join(re.sub(r"<[^>]+>", " ", cell).split())
        for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", html, flags=re.S)
    ]


def _page_rows(html: str) -> list[str]:
    """The charges table's rows, cells joined by a space, empty cells dropped."""
    table = html.split('id="lines-heading"', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S)
    return [" ".join(cell for cell in _cells(row) if cell) for row in rows]


def _pdf_fragments(content: bytes) -> list[tuple[float, float, str]]:
    """Every piece of text of the PDF as ``(y, x, text)`` in points, top of the page first."""
    fragments: list[tuple[float, float, str]] = []

    def visit(text, cm, tm, font, size):  # type: ignore[no-untyped-def]
        if text.strip():
            fragments.append((round(tm[5], 1), round(tm[4], 1), " ".join(text.split())))

    for page in pypdf.PdfReader(io.BytesIO(content)).pages:
        page.extract_text(visitor_text=visit)
    return sorted(fragments, key=lambda fragment: (-fragment[0], fragment[1]))


def _pdf_rows(content: bytes) -> list[str]:
    """The PDF's charges and totals as rows like ``_page_rows``: a row starts where an
    amount is written (the amount column never wraps, cells are top-aligned), and a
    wrapped description's next lines belong to the row above them."""
    points_per_mm = 72 / 25.4
    edges = [MARGIN_MM * points_per_mm]
    for width in COLUMNS_MM:
        edges.append(edges[-1] + width * points_per_mm)
    fragments = _pdf_fragments(content)
    header_y = next(y for y, _x, text in fragments if text == "Description")
    footnote_y = next(y for y, _x, text in fragments if text.startswith("Amounts are"))
    body = [(y, x, text) for y, x, text in fragments if footnote_y < y < header_y]

    def column(x: float) -> int:
        return max(i for i in range(4) if x >= edges[i] - 1)

    starts = sorted({y for y, x, _text in body if column(x) == 3}, reverse=True)
    rows: dict[float, dict[int, list[str]]] = {start: {} for start in starts}
    for y, x, text in body:
        start = min(start for start in starts if start >= y)
        rows[start].setdefault(column(x), []).append(text)
    return [" ".join(" ".join(rows[start][c]) for c in sorted(rows[start])) for start in starts]


def test_the_pdf_has_the_page_lines_and_totals_exactly(invoice, buyer_client):
    page = buyer_client.get(reverse("billing:invoice_detail", args=[invoice.pk]))
    rows = _page_rows(page.content.decode())
    assert rows == [
        "Reserved H100 SXM 80GB at Permian Flare 1 1488 GPU-hours 2.1 $3,124.80",
        "SLA credit on reserved H100 SXM 80GB at Permian Flare 1: availability 0.000 % "
        "(target 99.50 %), 50 % credit 50 % -$1,562.40",
        "Monthly commitment true-up (commitment 5000.00) $1,875.20",
        "Total $3,437.60",
        "Amount due $3,437.60",
    ]

    response = buyer_client.get(reverse("billing:invoice_pdf", args=[invoice.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="{invoice.number}.pdf"'
    assert _pdf_rows(response.content) == rows
    lines = [text for _y, _x, text in _pdf_fragments(response.content)]
    assert lines[:11] == [
        "Hashgrid",
        "GPU compute from mining sites",
        f"Invoice {invoice.number}",
        "Billed to: Acme Vision",
        f"Contract: {invoice.contract.reference}",
        "Period: October 2026 (UTC)",
        "Issued: 2026-11-04",
        "Description",
        "Quantity",
        "Unit price",
        "Amount (USD)",
    ]


def test_the_pdf_is_the_buyers_only(invoice, other_client, buyer_org):
    response = other_client.get(reverse("billing:invoice_pdf", args=[invoice.pk]))
    assert response.status_code == 404


def test_the_page_links_the_pdf(invoice, buyer_client):
    html = buyer_client.get(reverse("billing:invoice_detail", args=[invoice.pk])).content
    link = (
        f'<a class="btn btn-secondary" href="/billing/invoices/{invoice.pk}/pdf/">Download PDF</a>'
    )
    assert link in html.decode()
