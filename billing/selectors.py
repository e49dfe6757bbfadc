"""Reads for billing pages and the API: one organization's invoices, with what they render."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from accounts.models import Organization
from billing.models import CreditNote, Invoice, InvoiceLine, PaymentAttempt


def invoice_list(*, organization: Organization) -> QuerySet[Invoice]:
    return (
        Invoice.objects.for_organization(organization)  # type: ignore[attr-defined]
        .select_related("contract")
        .order_by("-month", "-pk")
    )


def invoice_detail_queryset(*, organization: Organization) -> QuerySet[Invoice]:
    return invoice_list(organization=organization).prefetch_related(
        Prefetch("lines", queryset=InvoiceLine.objects.order_by("position")),
        Prefetch("attempts", queryset=PaymentAttempt.objects.order_by("attempt_number")),
        Prefetch("credit_notes", queryset=CreditNote.objects.order_by("created_at", "pk")),
    )


def latest_attempt(invoice: Invoice) -> PaymentAttempt | None:
    attempts = list(invoice.attempts.all())
    return attempts[-1] if attempts else None
