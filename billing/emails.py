"""Emails billing sends to a buyer's finance people (owners, admins, finance role).

Called on commit (``transaction.on_commit``), never inside a transaction, so a rolled
back payment never mails anyone.
"""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mass_mail
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import FINANCE_ROLES, Membership
from billing.models import Invoice
from billing.money import format_money


def _recipients(organization_id: int) -> list[str]:
    return sorted(
        Membership.objects.filter(
            organization_id=organization_id, role__in=FINANCE_ROLES
        ).values_list("user__email", flat=True)
    )


def _send(template: str, *, invoice_id: int, context: dict[str, object] | None = None) -> int:
    invoice = Invoice.objects.select_related("buyer", "contract").get(pk=invoice_id)
    recipients = _recipients(invoice.buyer_id)
    if not recipients:
        return 0
    context = {
        "invoice": invoice,
        "organization": invoice.buyer,
        "amount_due": format_money(invoice.amount_due_minor, invoice.currency),
        "total": format_money(invoice.total_minor, invoice.currency),
        "invoice_url": settings.SITE_URL.rstrip("/")
        + reverse("billing:invoice_detail", args=[invoice.pk]),
        "payment_method_url": settings.SITE_URL.rstrip("/") + reverse("billing:payment_method"),
        **(context or {}),
    }
    subject = render_to_string(f"email/billing/{template}_subject.txt", context).strip()
    body = render_to_string(f"email/billing/{template}_message.txt", context)
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "[Hashgrid] ")
    messages = [(prefix + subject, body, None, [email]) for email in recipients]
    return send_mass_mail(messages, fail_silently=False)


def send_payment_failed(*, invoice_id: int, retry_at: object, reason: str) -> int:
    return _send(
        "payment_failed", invoice_id=invoice_id, context={"retry_at": retry_at, "reason": reason}
    )


def send_authentication_required(*, invoice_id: int, retry_at: object) -> int:
    return _send("authentication_required", invoice_id=invoice_id, context={"retry_at": retry_at})


def send_contract_suspended(*, invoice_id: int) -> int:
    return _send("contract_suspended", invoice_id=invoice_id)


def send_payment_received(*, invoice_id: int, amount_minor: int) -> int:
    invoice = Invoice.objects.only("currency").get(pk=invoice_id)
    return _send(
        "payment_received",
        invoice_id=invoice_id,
        context={"amount_paid": format_money(amount_minor, invoice.currency)},
    )
