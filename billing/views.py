"""Buyer pages: invoices (list, detail, printable, CSV), paying, the saved card; the
Stripe webhook endpoint.

Thin: check the organization and role, call one service or selector, render. Invoices of
another organization answer 404. Seeing and paying invoices needs a finance role (owner,
admin, finance).
"""

from __future__ import annotations

import csv
import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from accounts.models import FINANCE_ROLES
from accounts.requests import request_actor, request_organization
from accounts.tenancy import get_for_org_or_404, org_required
from billing import customers, payments, selectors, stripe_gateway, webhooks
from billing.invoice_document import invoice_document
from billing.invoice_pdf import invoice_pdf
from billing.models import AttemptStatus, Invoice
from billing.money import minor_to_major

PAGE_SIZE = 25
DEFAULT_STRIPE_JS_URL = "https://js.stripe.com/v3/"

buyer_finance = org_required(FINANCE_ROLES, buyer=True)


def _stripe_context() -> dict[str, str]:
    return {
        "stripe_js_url": getattr(settings, "STRIPE_JS_URL", "") or DEFAULT_STRIPE_JS_URL,
        "stripe_publishable_key": getattr(settings, "STRIPE_PUBLISHABLE_KEY", ""),
    }


def _invoice(request: HttpRequest, pk: int) -> Invoice:
    queryset = selectors.invoice_detail_queryset(organization=request_organization(request))
    return get_for_org_or_404(queryset, request, pk=pk)


@buyer_finance
@require_GET
def invoice_list(request: HttpRequest) -> HttpResponse:
    organization = request_organization(request)
    page = Paginator(selectors.invoice_list(organization=organization), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "billing/invoice_list.html",
        {"page_obj": page, "customer": customers.customer_of(organization)},
    )


@buyer_finance
@require_GET
def invoice_detail(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _invoice(request, pk)
    attempt = selectors.latest_attempt(invoice)
    client_secret = ""
    if (
        invoice.is_outstanding
        and attempt is not None
        and attempt.status == AttemptStatus.REQUIRES_ACTION
    ):
        try:
            client_secret = payments.client_secret_for(attempt=attempt)
        except stripe_gateway.StripeGatewayError as error:
            messages.error(request, stripe_gateway.error_message(error))
    lines = list(invoice.lines.all())
    return render(
        request,
        "billing/invoice_detail.html",
        {
            "invoice": invoice,
            "lines": lines,
            "document": invoice_document(invoice=invoice, lines=lines),
            "attempts": list(invoice.attempts.all()),
            "credit_notes": list(invoice.credit_notes.all()),
            "latest_attempt": attempt,
            "client_secret": client_secret,
            "customer": customers.customer_of(invoice.buyer),
            **_stripe_context(),
        },
    )


@buyer_finance
@require_GET
def invoice_print(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _invoice(request, pk)
    return render(
        request,
        "billing/invoice_print.html",
        {
            "invoice": invoice,
            "document": invoice_document(invoice=invoice, lines=list(invoice.lines.all())),
            "credit_notes": list(invoice.credit_notes.all()),
        },
    )


@buyer_finance
@require_GET
def invoice_pdf_download(request: HttpRequest, pk: int) -> HttpResponse:
    """The invoice as PDF: the page's document (``billing.invoice_document``) laid out
    by ``billing.invoice_pdf``."""
    invoice = _invoice(request, pk)
    document = invoice_document(invoice=invoice, lines=list(invoice.lines.all()))
    name = invoice.number or f"draft-{invoice.contract_id}-{invoice.month:%Y-%m}"
    response = HttpResponse(invoice_pdf(document), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{name}.pdf"'
    return response


@buyer_finance
@require_GET
def invoice_csv(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _invoice(request, pk)
    name = invoice.number or f"draft-{invoice.contract_id}-{invoice.month:%Y-%m}"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    writer = csv.writer(response)
    writer.writerow(
        [
            "invoice",
            "month",
            "position",
            "kind",
            "description",
            "service_month",
            "quantity",
            "unit",
            "unit_price",
            "amount",
            "currency",
        ]
    )
    for line in invoice.lines.all():
        writer.writerow(
            [
                invoice.number or "draft",
                f"{invoice.month:%Y-%m}",
                line.position,
                line.kind,
                line.description,
                f"{line.service_month:%Y-%m}",
                "" if line.quantity is None else line.quantity.normalize(),
                line.unit,
                "" if line.unit_price is None else line.unit_price,
                minor_to_major(line.amount_minor),
                invoice.currency,
            ]
        )
    writer.writerow(
        [
            "",
            "",
            "",
            "total",
            "",
            "",
            "",
            "",
            "",
            minor_to_major(invoice.total_minor),
            invoice.currency,
        ]
    )
    return response


@buyer_finance
@require_POST
def invoice_pay(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _invoice(request, pk)
    try:
        attempt = payments.pay_now(invoice=invoice)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    except stripe_gateway.StripeUnavailable:
        messages.error(request, "Stripe cannot be reached right now; nothing was charged yet.")
    else:
        if attempt.status == AttemptStatus.SUCCEEDED:
            messages.success(request, f"Paid. Thank you — invoice {invoice.number} is settled.")
        elif attempt.status == AttemptStatus.REQUIRES_ACTION:
            messages.info(request, "Your bank asks you to authenticate this payment.")
        elif attempt.status == AttemptStatus.PROCESSING:
            messages.info(request, "The payment is being processed.")
        else:
            messages.error(
                request, f"The payment failed: {attempt.failure_message or 'card declined'}."
            )
    return redirect("billing:invoice_detail", pk=invoice.pk)


@buyer_finance
@require_POST
def invoice_payment_refresh(request: HttpRequest, pk: int) -> HttpResponse:
    """After Stripe.js authenticated a payment: re-read it from Stripe and apply it."""
    invoice = _invoice(request, pk)
    attempt = selectors.latest_attempt(invoice)
    if attempt is not None and attempt.stripe_payment_intent_id:
        try:
            payments.sync_payment_intent(payment_intent_id=attempt.stripe_payment_intent_id)
        except stripe_gateway.StripeGatewayError as error:
            messages.error(request, stripe_gateway.error_message(error))
    invoice.refresh_from_db()
    if invoice.payment_status == "paid":
        messages.success(request, f"Paid. Thank you — invoice {invoice.number} is settled.")
    return redirect("billing:invoice_detail", pk=invoice.pk)


def _return_to(request: HttpRequest, candidate: str) -> str:
    """Where the card page sends the buyer once a card is saved: a path on this site
    (the quote that asked for a card), never another host; "" for none."""
    if candidate.startswith("/") and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return ""


@buyer_finance
@require_GET
def payment_method(request: HttpRequest) -> HttpResponse:
    organization = request_organization(request)
    setup_intent = None
    try:
        setup_intent = customers.card_setup_start(organization=organization)
    except stripe_gateway.StripeGatewayError:
        messages.error(request, "Card payments are unavailable right now; try again shortly.")
    return render(
        request,
        "billing/payment_method.html",
        {
            "customer": customers.customer_of(organization),
            "setup_intent_client_secret": setup_intent.client_secret if setup_intent else "",
            "return_to": _return_to(request, request.GET.get("next", "")),
            **_stripe_context(),
        },
    )


@buyer_finance
@require_POST
def payment_method_confirm(request: HttpRequest) -> HttpResponse:
    """Stripe.js confirmed a SetupIntent in the browser; check it at Stripe and save it."""
    setup_intent_id = request.POST.get("setup_intent", "").strip()
    return_to = _return_to(request, request.POST.get("next", ""))
    wants_json = "application/json" in request.headers.get("Accept", "")
    try:
        customer = customers.card_setup_complete(
            organization=request_organization(request),
            setup_intent_id=setup_intent_id,
            actor=request_actor(request),
        )
    except (ValidationError, stripe_gateway.StripeGatewayError) as error:
        text = (
            " ".join(error.messages)
            if isinstance(error, ValidationError)
            else stripe_gateway.error_message(error)
        )
        if wants_json:
            return JsonResponse({"ok": False, "error": text}, status=400)
        messages.error(request, text)
        again = reverse("billing:payment_method")
        return redirect(f"{again}?{urlencode({'next': return_to})}" if return_to else again)
    text = f"Card saved: {customer.card_brand.title()} ending in {customer.card_last4}."
    if wants_json:
        return JsonResponse({"ok": True, "message": text, "next": return_to})
    messages.success(request, text)
    return redirect(return_to or "billing:payment_method")


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Stripe → us. The signature is checked on the raw body; anything else is a 400."""
    try:
        event = stripe_gateway.verify_webhook(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature", "")
        )
    except stripe_gateway.WebhookSignatureInvalid:
        return HttpResponseBadRequest("invalid signature")
    try:
        created = webhooks.receive(event)
    except stripe_gateway.StripeUnavailable:
        return HttpResponse("stripe unavailable, retry", status=503)
    body: dict[str, Any] = {"received": True, "duplicate": not created}
    return HttpResponse(json.dumps(body), content_type="application/json")
