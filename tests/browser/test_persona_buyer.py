"""Issue 16 as a buyer tries it (points 1-6 and 14), in one browser tab: first without an
account (offers, prices, an offer's servers and terms, a search that says why it did not
run, the status page), then signed in (quote and its terms, the card page and back to
the same quote, the reservation, the dashboard's checklist and cost chart, usage with
its chart and CSV, API keys naming what they serve, an invoice and its PDF).

Every page is captured at 1366 px and 375 px under ``<artifacts>/screenshots/buyer/`` and
fails when a main action overflows (tests/browser/layout.py).
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import time_machine
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import Role
from billing.models import BillingCustomer
from capacity.models import EnergySource, Interconnect, Region
from contracts.models import Contract, ContractState, InferenceProduct
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    finalized_invoice_for,
    localstripe,
    stripe_proxy,
    stripe_settings,
)
from tests.billing.test_invoice_pdf import _pdf_rows
from tests.browser.conftest import sign_in
from tests.browser.layout import check_layout
from tests.factories import (
    GpuDeviceFactory,
    MembershipFactory,
    NodeFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    catalog_gpu,
    gpu_pool,
)

pytestmark = pytest.mark.browser

PERSONA = "buyer"
COST_CHART = "document.querySelector('canvas[data-chart=cost-per-day]')"
USAGE_CHART = "document.querySelector('canvas[data-chart=usage-per-bucket]')"


def _check(page: Page, name: str) -> None:
    check_layout(page, persona=PERSONA, name=name)


def _chart_axes(page: Page, canvas: str) -> list[str]:
    """The titles of a drawn Chart.js chart's axes, x first."""
    page.wait_for_function(f"() => window.Chart && Chart.getChart({canvas})")
    return page.evaluate(
        f"() => Object.values(Chart.getChart({canvas}).options.scales)"
        ".map(scale => scale.title.text)"
    )


def _query(url: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return parts.path, parse_qs(parts.query)


@pytest.fixture
def market(settings):
    """Two offers of Andes Hash: Permian Flare 1 (North America, two servers whose
    hardware the partner stated) and Muscat Gas 2 (Middle East); one inference product."""
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    partner = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    texas = SiteFactory(
        organization=partner,
        name="Permian Flare 1",
        region=Region.NORTH_AMERICA,
        country="US",
        energy_source=EnergySource.FLARE_GAS,
    )
    for name in ("gpu-a", "gpu-b"):
        node = NodeFactory(
            site=texas,
            name=name,
            gpu_model=catalog_gpu(),
            gpu_count=2,
            cpu_cores=96,
            cpu_model="AMD EPYC 9454",
            ram_gib=1024,
            disk_gib=7680,
            network_gbps=100,
            interconnect=Interconnect.NVLINK,
            driver_version="550.54.15",
            cuda_version="12.4",
            status="online",
        )
        for index in range(2):
            GpuDeviceFactory(node=node, index=index)
    offer = OfferFactory(
        site=texas,
        gpu_count=4,
        available_from=timezone.now() - timedelta(days=1),
        reserved_price_1m_per_gpu_hour=Decimal("2.0000"),
    )
    oman = SiteFactory(organization=partner, name="Muscat Gas 2", region=Region.MIDDLE_EAST)
    gpu_pool(site=oman, gpus=4)
    OfferFactory(site=oman, gpu_count=4, available_from=timezone.now() - timedelta(days=1))
    llama, _ = InferenceProduct.objects.get_or_create(
        slug="llama-3.1-8b-instruct",
        defaults={
            "name": "Llama 3.1 8B Instruct",
            "input_price_per_million_tokens": Decimal("0.05"),
            "output_price_per_million_tokens": Decimal("0.08"),
        },
    )
    return offer, llama


def test_buyer_browses_reserves_and_reads_usage_keys_and_invoices(
    page: Page,
    live_url: str,
    market,
    stripe_settings,  # noqa: F811
) -> None:
    offer, llama = market
    stripe_settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False  # the card is saved below
    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True)
    owner = MembershipFactory(organization=buyer, role=Role.OWNER).user
    # Last term's contract, ended, left October's invoice ($6,854.40) to pay.
    invoice = finalized_invoice_for(buyer, total_minor=685_440)
    Contract.objects.filter(pk=invoice.contract_id).update(state=ContractState.EXPIRED)
    page.set_viewport_size({"width": 1366, "height": 768})
    violations: list[str] = []  # of the Content Security Policy, on any page
    page.on(
        "console",
        lambda message: (
            violations.append(f"{page.url} {message.text[:120]}")
            if "Content Security Policy" in message.text
            else None
        ),
    )

    # -- point 1: offers and prices without an account ------------------------------------
    page.goto("/")
    expect(page.locator("[data-region-count]")).to_have_text("GPU marketplace · 2 regions")
    _check(page, "landing")
    page.locator("[data-cta=browse]").click()
    expect(page.get_by_role("heading", name="Find GPU capacity", level=1)).to_be_visible()
    expect(page.locator("[data-offer]")).to_have_count(2)
    # Point 3: the filters are a styled grid, not an inline form.
    filters = page.get_by_role("form", name="Search filters")
    assert filters.evaluate("form => getComputedStyle(form).display") == "grid"
    _check(page, "search")

    # Point 3: a start in the past says why nothing was searched.
    page.get_by_label("Start (UTC)").fill("2020-01-01T00:00")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("[data-search-refused]")).to_have_text(
        "No search was run: Start (UTC): The reservation cannot start in the past."
    )
    expect(page.get_by_text("No offers match")).to_have_count(0)
    _check(page, "search-start-in-the-past")

    page.get_by_role("link", name="Pricing").first.click()
    expect(page.get_by_role("heading", name="Pricing", level=1)).to_be_visible()
    expect(page.locator(f"[data-product='{llama.slug}'] td")).to_have_text(
        [f"{llama.name}{llama.slug}", "0.0500 USD", "0.0800 USD"]
    )
    _check(page, "pricing")

    # Point 2: the offer's servers and terms, public; reserving asks for an account.
    page.goto("/marketplace/")
    page.locator("[data-offer]").filter(has_text="Permian Flare 1").get_by_role(
        "link", name="View"
    ).click()
    expect(page.get_by_role("heading", name="H100 SXM 80GB at Permian Flare 1")).to_be_visible()
    expect(page.locator("[data-server] dd")).to_have_text(
        [
            "2",
            "2 x H100 SXM 80GB",
            "96 cores (AMD EPYC 9454)",
            "1024 GiB",
            "7680 GiB",
            "100 Gbit/s",
            "NVLink",
            "550.54.15 / CUDA 12.4",
        ]
    )
    expect(page.locator("[data-auto-renew]")).to_contain_text("On: the contract renews")
    expect(page.locator("[data-early-termination]")).to_have_text(
        "25.00 % of the reserved charge left in the term"
    )
    sign_up = page.get_by_role("link", name="Sign up to reserve")
    expect(sign_up).to_be_visible()
    assert "Andes Hash" not in page.content()
    _check(page, "offer-public")
    sign_up.click()
    here = quote(f"/marketplace/offers/{offer.pk}/", safe="/")
    expect(page).to_have_url(re.compile(rf"/accounts/signup/\?next={re.escape(here)}"))

    # -- point 14: the status page, in words ----------------------------------------------
    page.get_by_role("link", name="System status").click()
    expect(page.get_by_role("heading", name="System status", level=1)).to_be_visible()
    expect(page.locator("[data-overall]")).to_have_text("All systems operational.")
    expect(page.locator("[data-status] tbody tr td:first-child")).to_have_text(
        ["Web application", "Database", "Task broker"]
    )
    _check(page, "status")

    # -- signed in: the dashboard before any reservation ----------------------------------
    sign_in(page, owner, live_url)
    page.goto("/dashboard/")
    reserve_step = page.locator("[data-step=reserve]")
    expect(reserve_step).not_to_have_class(re.compile("is-done"))
    expect(reserve_step).to_contain_text("Pick GPUs in a region for 1 to 12 months.")
    _check(page, "dashboard-new")

    # -- points 2 and 4: a quote shows the terms and sends the buyer to the card page -----
    page.goto(f"/marketplace/offers/{offer.pk}/")
    page.get_by_label("GPUs").fill("2")
    page.get_by_role("button", name="Get a quote").click()
    expect(page.get_by_role("heading", name="Your quote")).to_be_visible()
    expect(page.locator("[data-sla-tiers]")).to_be_visible()
    expect(page.locator("[data-early-termination]")).to_contain_text("; at most ")
    expect(page.get_by_role("button", name="Confirm reservation")).to_have_count(0)
    quote_url = page.url
    _check(page, "quote-needs-a-card")
    page.get_by_role("link", name="Add a payment method").click()

    expect(page.get_by_role("heading", name="Payment method")).to_be_visible()
    expect(page.locator("[data-return-to]")).to_contain_text("your quote")
    card = page.locator("#card-element")
    card.get_by_placeholder("number").fill("4242424242424242")
    card.get_by_placeholder("exp_month").fill("12")
    card.get_by_placeholder("exp_year").fill("34")
    card.get_by_placeholder("cvc").fill("123")
    card.get_by_placeholder("postal_code").fill("75001")
    _check(page, "payment-method")
    page.get_by_role("button", name="Save card").click()

    expect(page.get_by_text("Card saved: Visa ending in 4242")).to_be_visible()
    assert _query(page.url) == _query(quote_url)
    assert BillingCustomer.objects.get(organization=buyer).card_last4 == "4242"
    # The confirm step states the same terms.
    expect(page.get_by_role("button", name="Confirm reservation")).to_be_visible()
    expect(page.locator("[data-auto-renew]")).to_contain_text("On: the contract renews")
    expect(page.locator("[data-sla-tiers]")).to_be_visible()
    _check(page, "quote")
    page.get_by_role("button", name="Confirm reservation").click()
    contract = Contract.objects.get(buyer=buyer, state=ContractState.ACTIVE)
    expect(page).to_have_url(re.compile(rf"/contracts/{contract.pk}/$"))
    _check(page, "contract")

    # -- point 5: an API key for on-demand inference names what it serves -----------------
    page.get_by_role("link", name="Add on demand").click()
    page.get_by_label("What to enable").select_option(value=f"product:{llama.pk}")
    _check(page, "on-demand")
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_text("On-demand inference enabled")).to_be_visible()
    page.get_by_role("link", name="New API key").click()
    page.get_by_label("Name").fill("chatbot prod")
    _check(page, "line-api-key")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("[data-new-key] [data-secret]")).to_contain_text("hg_")
    _check(page, "line-api-key-created")
    page.goto("/organization/api-keys/")
    row = page.locator("tbody tr").filter(has_text="chatbot prod")
    expect(row.locator("[data-serves]")).to_have_text(
        f"On-demand inference: {llama.name} on {contract.reference}"
    )
    _check(page, "api-keys")

    # -- point 5, hours later: the checklist, charts with axes, the CSV's units -----------
    with time_machine.travel(timezone.now() + timedelta(hours=3), tick=True):
        page.goto("/dashboard/")
        expect(reserve_step).to_have_class(re.compile("is-done"))
        expect(reserve_step).to_contain_text("2 GPUs reserved now.")
        expect(page.locator("[data-gpus-held]")).to_have_text("2")
        assert _chart_axes(page, COST_CHART) == ["Day (UTC)", "Estimated cost (USD)"]
        spec = json.loads(page.locator("#cost-per-day").text_content() or "")
        today_cost = Decimal(spec["series"][0]["values"][-1])
        assert today_cost > 0
        hover = page.evaluate(
            f"() => {{ const c = Chart.getChart({COST_CHART}); const ds = c.data.datasets[0]; "
            "return c.options.plugins.tooltip.callbacks.label("
            "{dataset: ds, parsed: {y: ds.data[ds.data.length - 1]}}); }"
        )
        assert hover == f"Estimated cost: {today_cost:,.2f} USD"
        expect(page.locator("[data-chart-fallback]")).to_be_hidden()
        _check(page, "dashboard")

        page.goto("/contracts/usage/")
        expect(page.get_by_role("heading", name=f"{contract.reference} by day")).to_be_visible()
        assert _chart_axes(page, USAGE_CHART) == [
            "Day (UTC)",
            "Busy GPU time (GPU-h)",
            "Tokens, input + output",
        ]
        _check(page, "usage")
        download = page.get_by_role("link", name="Download CSV")
        response = page.request.get(download.get_attribute("href") or "")
        table = list(csv.reader(io.StringIO(response.text())))
        assert table[0] == [
            "start (UTC)",
            "busy GPU time (ms)",
            "energy (mJ)",
            "input tokens (tokens)",
            "output tokens (tokens)",
            "requests (count)",
            "cost (USD)",
            "currency (ISO 4217)",
        ]
        assert Decimal(table[-1][6]) > 0

    # -- point 6: an invoice and its PDF, with the same lines and totals ------------------
    page.goto("/billing/invoices/")
    expect(page.get_by_role("heading", name="Invoices")).to_be_visible()
    _check(page, "invoices")
    page.get_by_role("link", name=invoice.number).click()
    expect(page.get_by_text("$6,854.40 due")).to_be_visible()
    _check(page, "invoice")
    page_rows = [
        " ".join(
            " ".join(cell.split())
            for cell in row.locator("td, th").all_inner_texts()
            if cell.strip()
        )
        for row in page.locator("section:has(#lines-heading) :is(tbody, tfoot) tr").all()
    ]
    with page.expect_download() as pdf:
        page.get_by_role("link", name="Download PDF").click()
    content = (pdf.value.path()).read_bytes()
    assert page_rows == [
        "Monthly commitment true-up (commitment 6854.40) $6,854.40",
        "Total $6,854.40",
        "Amount due $6,854.40",
    ]
    assert _pdf_rows(content) == page_rows
    assert violations == []
