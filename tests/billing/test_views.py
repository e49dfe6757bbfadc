"""Buyer pages: invoices, printable and CSV versions, paying, the card page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import Role
from billing.models import BillingCustomer, PaymentStatus
from contracts.selectors import buyer_has_payment_method
from tests.billing.conftest import finalized_invoice_for, save_card
from tests.factories import MembershipFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db


def test_invoice_pages_for_the_buyer(buyer_client, buyer_org):
    invoice = finalized_invoice_for(buyer_org, total_minor=685_440)
    listing = buyer_client.get(reverse("billing:invoices"))
    assert listing.status_code == 200
    assert invoice.number in listing.content.decode()
    detail = buyer_client.get(reverse("billing:invoice_detail", args=[invoice.pk]))
    assert "$6,854.40" in detail.content.decode()
    printable = buyer_client.get(reverse("billing:invoice_print", args=[invoice.pk]))
    assert f"Invoice {invoice.number}" in printable.content.decode()
    exported = buyer_client.get(reverse("billing:invoice_csv", args=[invoice.pk]))
    assert exported["Content-Type"].startswith("text/csv")
    rows = exported.content.decode().splitlines()
    assert rows[0].startswith("invoice,month,position,kind")
    assert rows[1].endswith(",6854.40,USD")
    assert rows[-1].endswith(",6854.40,USD")


def test_another_tenants_invoice_is_a_404(other_client, buyer_org):
    invoice = finalized_invoice_for(buyer_org)
    for name in ("billing:invoice_detail", "billing:invoice_print", "billing:invoice_csv"):
        assert other_client.get(reverse(name, args=[invoice.pk])).status_code == 404
    assert other_client.post(reverse("billing:invoice_pay", args=[invoice.pk])).status_code == 404


def test_members_without_a_finance_role_are_refused(buyer_org):
    invoice = finalized_invoice_for(buyer_org)
    viewer = MembershipFactory(organization=buyer_org, role=Role.VIEWER).user
    assert (
        client_for(viewer).get(reverse("billing:invoice_detail", args=[invoice.pk])).status_code
        == 403
    )
    finance = MembershipFactory(organization=buyer_org, role=Role.FINANCE).user
    assert (
        client_for(finance).get(reverse("billing:invoice_detail", args=[invoice.pk])).status_code
        == 200
    )


def test_pay_now_from_the_invoice_page(buyer_client, buyer_org, localstripe):
    save_card(buyer_org, localstripe)
    invoice = finalized_invoice_for(buyer_org)
    response = buyer_client.post(reverse("billing:invoice_pay", args=[invoice.pk]), follow=True)
    assert "is settled" in response.content.decode()
    invoice.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.PAID


def test_card_page_saves_a_card_confirmed_by_stripe(buyer_client, buyer_org, localstripe, settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    assert not buyer_has_payment_method(buyer_org)
    page = buyer_client.get(reverse("billing:payment_method"))
    html = page.content.decode()
    assert localstripe.js_url in html  # Stripe.js from settings, nothing else
    secret = page.context["setup_intent_client_secret"]
    setup_intent_id = secret.split("_secret_")[0]
    # A forged id (or one not confirmed yet) saves nothing.
    refused = buyer_client.post(
        reverse("billing:payment_method_confirm"), {"setup_intent": setup_intent_id}
    )
    assert refused.status_code == 302
    assert not buyer_has_payment_method(buyer_org)
    # What Stripe.js does in the browser with the card the buyer typed:
    confirmed = localstripe.confirm_setup_intent(
        setup_intent_id=setup_intent_id, client_secret=secret, card="4242424242424242"
    )
    assert confirmed["status"] == "succeeded"
    response = buyer_client.post(
        reverse("billing:payment_method_confirm"), {"setup_intent": setup_intent_id}, follow=True
    )
    assert "Card saved: Visa ending in 4242" in response.content.decode()
    customer = BillingCustomer.objects.get(organization=buyer_org)
    assert (customer.card_brand, customer.card_last4) == ("visa", "4242")
    assert buyer_has_payment_method(buyer_org)


def test_declined_card_is_not_saved(buyer_client, buyer_org, localstripe, settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    page = buyer_client.get(reverse("billing:payment_method"))
    secret = page.context["setup_intent_client_secret"]
    setup_intent_id = secret.split("_secret_")[0]
    answer = localstripe.confirm_setup_intent(
        setup_intent_id=setup_intent_id, client_secret=secret, card="4000000000000002"
    )
    assert answer["error"]["code"] == "card_declined"
    buyer_client.post(reverse("billing:payment_method_confirm"), {"setup_intent": setup_intent_id})
    assert not buyer_has_payment_method(buyer_org)
