"""A buyer saves a card through the Stripe.js page (localstripe's fake Stripe.js) and pays
an invoice from the invoice page."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from accounts.models import Role
from billing.models import BillingCustomer, PaymentStatus
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    finalized_invoice_for,
    localstripe,
    stripe_proxy,
    stripe_settings,
)
from tests.browser.conftest import sign_in, snap
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.browser


def test_save_card_with_stripe_js_then_pay_an_invoice(page: Page, live_url: str, settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True)
    owner = MembershipFactory(organization=buyer, role=Role.OWNER).user
    invoice = finalized_invoice_for(buyer, total_minor=685_440)
    sign_in(page, owner, live_url)

    page.goto("/billing/invoices/")
    expect(page.get_by_role("heading", name="Invoices")).to_be_visible()
    expect(page.get_by_text(invoice.number)).to_be_visible()
    snap(page, "01-invoices")
    page.get_by_role("link", name="Add a card").click()

    expect(page.get_by_role("heading", name="Payment method")).to_be_visible()
    card = page.locator("#card-element")
    card.get_by_placeholder("number").fill("4242424242424242")
    card.get_by_placeholder("exp_month").fill("12")
    card.get_by_placeholder("exp_year").fill("34")
    card.get_by_placeholder("cvc").fill("123")
    card.get_by_placeholder("postal_code").fill("75001")
    snap(page, "02-card-form")
    page.get_by_role("button", name="Save card").click()
    expect(page.get_by_text("Card saved: Visa ending in 4242")).to_be_visible()
    snap(page, "03-card-saved")
    assert BillingCustomer.objects.get(organization=buyer).card_last4 == "4242"

    page.goto(f"/billing/invoices/{invoice.pk}/")
    expect(page.get_by_role("heading", name=f"Invoice {invoice.number}")).to_be_visible()
    expect(page.get_by_text("$6,854.40 due")).to_be_visible()
    page.get_by_role("button", name=re.compile(r"Pay now with Visa")).click()
    expect(page.get_by_text(f"invoice {invoice.number} is settled")).to_be_visible()
    snap(page, "04-paid")
    invoice.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.PAID
