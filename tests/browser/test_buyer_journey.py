"""A buyer searches offers, gets a quote, reserves GPUs, sees them on the dashboard, adds
on-demand inference, creates an API key for it, reads the usage chart, then opens an
invoice and pays it with the saved card."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import Role
from billing.models import PaymentStatus
from capacity.models import EnergySource, Region
from contracts.models import Allocation, Contract, ContractState, InferenceProduct, LineApiKey
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    connect_fake,
    connect_settings,
    finalized_invoice_for,
    localstripe,
    save_card,
    stripe_proxy,
    stripe_settings,
)
from tests.browser.conftest import snap
from tests.factories import (
    MembershipFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    UserFactory,
    gpu_pool,
)

pytestmark = [pytest.mark.browser, pytest.mark.calendar]
PASSWORD = "correct-horse-battery"


@pytest.fixture
def marketplace(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True  # billing's seam: a saved card
    partner = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    oman = SiteFactory(
        organization=partner,
        name="Duqm Solar",
        region=Region.MIDDLE_EAST,
        country="OM",
        energy_source=EnergySource.SOLAR,
    )
    texas = SiteFactory(organization=partner, name="Permian Flare", country="US")
    for site, price in ((oman, "1.8000"), (texas, "2.1000")):
        gpu_pool(site=site, gpus=4)
        OfferFactory(
            site=site,
            gpu_count=4,
            available_from=timezone.now() - timedelta(days=1),
            reserved_price_1m_per_gpu_hour=Decimal(price),
        )
    # The catalog row the data migration seeds (re-created if an earlier transactional
    # test flushed the database).
    InferenceProduct.objects.get_or_create(
        slug="llama-3.1-8b-instruct",
        defaults={
            "name": "Llama 3.1 8B Instruct",
            "input_price_per_million_tokens": Decimal("0.05"),
            "output_price_per_million_tokens": Decimal("0.08"),
        },
    )
    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True)
    user = UserFactory(email="giulia@acme-vision.example")
    MembershipFactory(organization=buyer, user=user, role=Role.OWNER)
    return buyer, user


def test_search_reserve_api_key_usage_chart_and_pay_an_invoice(
    page: Page,
    live_url: str,
    marketplace,
    localstripe,  # noqa: F811 (fixtures imported above)
) -> None:
    buyer, user = marketplace
    # Last term's contract left an unpaid October invoice ($6,854.40); the card is saved.
    invoice = finalized_invoice_for(buyer, total_minor=685_440)
    Contract.objects.filter(pk=invoice.contract_id).update(state=ContractState.EXPIRED)
    save_card(buyer, localstripe)
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))

    # Search: both offers, cheapest first; then only the Middle East.
    page.get_by_role("link", name="Marketplace").first.click()
    expect(page.get_by_role("heading", name="Find GPU capacity")).to_be_visible()
    rows = page.locator("[data-results] tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("Duqm Solar")
    page.get_by_label("Region").select_option(Region.MIDDLE_EAST)
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("4 of 4")
    snap(page, "01-search")

    # Offer → quote for 2 GPUs, one month.
    rows.first.get_by_role("link", name="View").click()
    expect(page.get_by_role("heading", name=re.compile("at Duqm Solar"))).to_be_visible()
    page.get_by_label("GPUs").fill("2")
    snap(page, "02-offer")
    page.get_by_role("button", name="Get a quote").click()
    expect(page.get_by_role("heading", name="Your quote")).to_be_visible()
    expect(page.locator("[data-total]")).to_contain_text("USD")
    snap(page, "03-quote")

    # Confirm: one transaction, a contract with two allocated GPUs.
    page.get_by_role("button", name="Confirm reservation").click()
    contract = Contract.objects.get(buyer=buyer, state=ContractState.ACTIVE)
    expect(page).to_have_url(re.compile(rf"/contracts/{contract.pk}/$"))
    expect(page.get_by_text(re.compile(r"Reserved 2 x .* at Duqm Solar"))).to_be_visible()
    assert Allocation.objects.filter(line__contract=contract).count() == 2
    snap(page, "04-contract")

    # The buyer's overview lists the contract (dashboard partial, on the usage page).
    page.goto("/dashboard/")
    expect(page.get_by_role("heading", name="Buying compute")).to_be_visible()
    page.get_by_role("link", name="Usage").first.click()
    expect(page.locator("[data-dashboard-contracts]")).to_contain_text(contract.reference)
    expect(page.locator("[data-dashboard-contracts]")).to_contain_text("Duqm Solar")
    snap(page, "05-dashboard")

    # On-demand inference on the contract, and an API key for it.
    page.goto(f"/contracts/{contract.pk}/")
    page.get_by_role("link", name="Add on demand").click()
    llama = InferenceProduct.objects.get(slug="llama-3.1-8b-instruct")
    page.get_by_label("What to enable").select_option(value=f"product:{llama.pk}")
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_text("On-demand inference enabled")).to_be_visible()
    page.get_by_role("link", name="New API key").click()
    page.get_by_label("Name").fill("chatbot prod")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("[data-new-key] [data-secret]")
    expect(secret).to_contain_text("hg_")
    snap(page, "06-api-key")
    link = LineApiKey.objects.select_related("api_key").get(line__contract=contract)
    assert secret.inner_text().startswith(link.api_key.prefix)

    # Usage, three hours later (the clock moves for the live server too): the reservation
    # has run since its start, so the month's cost chart has bars to draw.
    with time_machine.travel(timezone.now() + timedelta(hours=3), tick=True):
        page.get_by_role("link", name="Usage").first.click()
        chart = page.get_by_role("figure", name="Estimated cost per day this month")
        expect(chart).to_be_visible()
        today = timezone.now()
        bars = chart.locator("rect")
        expect(bars).to_have_count(today.day)
        # Nothing was reserved before today: the month's earlier days cost nothing.
        expect(bars.first.locator("title")).to_have_text(
            f"{today:%Y-%m}-01: 0.00 USD" if today.day > 1 else re.compile(rf"^{today:%Y-%m}-01")
        )
        expect(bars.last.locator("title")).to_have_text(
            re.compile(rf"^{today:%Y-%m-%d}: [\d,]+\.\d\d USD$")
        )
        expect(page.get_by_role("heading", name=f"{contract.reference} by day")).to_be_visible()
        snap(page, "07-usage-chart")

    # An invoice: open it from the list and pay it with the saved Visa.
    page.goto("/billing/invoices/")
    expect(page.get_by_role("heading", name="Invoices")).to_be_visible()
    page.get_by_role("link", name=invoice.number).click()
    expect(page.get_by_role("heading", name=f"Invoice {invoice.number}")).to_be_visible()
    expect(page.get_by_text("$6,854.40 due")).to_be_visible()
    snap(page, "08-invoice")
    page.get_by_role("button", name=re.compile(r"Pay now with Visa")).click()
    expect(page.get_by_text(f"invoice {invoice.number} is settled")).to_be_visible()
    snap(page, "09-invoice-paid")
    invoice.refresh_from_db()
    assert invoice.payment_status == PaymentStatus.PAID
