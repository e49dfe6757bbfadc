"""An invoice as PDF, laid out with fpdf2 from ``billing.invoice_document``: the same
rows and totals as the invoice page, character for character.

The only module that imports ``fpdf``. It uses the PDF standard font Helvetica in the
Windows-1252 encoding (which has €, the dashes and typographic quotes), so no font file
ships with the app; a character outside that encoding (a site name in another script)
is written as "?". The file's creation date is the invoice's (finalized, else drafted).
"""

from __future__ import annotations

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from billing.invoice_document import InvoiceDocument

ENCODING = "windows-1252"
PAGE_WIDTH_MM = 210
MARGIN_MM = 15
# Description, quantity, unit price, amount: the page's four columns.
COLUMNS_MM = (92, 34, 26, 28)
ROW_MM = 6


def _safe(text: str) -> str:
    """``text`` with what Windows-1252 cannot write replaced by "?"."""
    return text.encode(ENCODING, errors="replace").decode(ENCODING)


def invoice_pdf(document: InvoiceDocument) -> bytes:
    pdf = FPDF(format="A4")
    pdf.core_fonts_encoding = ENCODING
    pdf.set_creation_date(document.dated)  # the invoice's date: reproducible bytes
    pdf.set_title(_safe(document.title))
    pdf.set_author("Hashgrid")
    pdf.set_margins(MARGIN_MM, MARGIN_MM)
    pdf.set_auto_page_break(auto=True, margin=MARGIN_MM)
    pdf.add_page()

    pdf.set_font("helvetica", "B", 18)
    pdf.cell(0, 10, "Hashgrid", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("helvetica", "", 9)
    pdf.cell(0, 5, "GPU compute from mining sites", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    pdf.set_font("helvetica", "B", 14)
    title = document.title if not document.is_draft else "DRAFT - not a valid invoice"
    pdf.cell(0, 8, _safe(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("helvetica", "", 10)
    facts = [
        f"Billed to: {document.buyer_name}",
        f"Contract: {document.contract_reference}",
        f"Period: {document.period} (UTC)",
    ]
    if document.issued:
        facts.append(f"Issued: {document.issued}")
    for fact in facts:
        pdf.cell(0, 5, _safe(fact), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)

    with pdf.table(
        col_widths=COLUMNS_MM,
        text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT"),
        v_align="TOP",
        line_height=ROW_MM,
        first_row_as_headings=True,
    ) as table:
        table.row(["Description", "Quantity", "Unit price", f"Amount ({document.currency})"])
        if not document.lines:
            table.row(["No charges this month.", "", "", ""])
        for line in document.lines:
            description = (
                f"Late usage: {line.description}" if line.is_late_usage else line.description
            )
            table.row([_safe(description), line.quantity, line.unit_price, _safe(line.amount)])
    pdf.ln(2)
    for total in document.totals:
        pdf.set_font("helvetica", "B" if total.is_strong else "", 10)
        pdf.cell(sum(COLUMNS_MM[:3]), ROW_MM, total.label, align="R")
        pdf.cell(
            COLUMNS_MM[3],
            ROW_MM,
            _safe(total.amount),
            align="R",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
    pdf.ln(6)
    pdf.set_font("helvetica", "", 8)
    pdf.multi_cell(
        0,
        4,
        "Amounts are rounded once per line, half-up, to the cent; the total is the sum of "
        "the rounded lines. Usage reported after this invoice was finalized appears on the "
        "next one as late usage.",
    )
    return bytes(pdf.output())
