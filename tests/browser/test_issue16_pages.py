"""Issue 16 in a browser, at 1366 px and 375 px wide, screenshots kept under
test-artifacts/screenshots/: the public marketplace (point 1), the search that says why
(point 3), the quote -> card page -> same quote round trip (point 4), and the partner's
offers table whose actions never hide behind a sideways scroll (point 10)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import time_machine
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from accounts.models import Role
from billing.models import BillingCustomer
from capacity.models import Region
from contracts import checkout
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    localstripe,
    stripe_proxy,
    stripe_settings,
)
from tests.browser.conftest import sign_in, snap
from tests.factories import (
    MembershipFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    gpu_pool,
)

pytestmark = pytest.mark.browser

WIDTHS = {"1366": {"width": 1366, "height": 900}, "375": {"width": 375, "height": 812}}


@pytest.fixture(params=sorted(WIDTHS))
def sized_page(request, browser: Browser, live_url: str) -> Iterator[Page]:
    context = browser.new_context(base_url=live_url, viewport=WIDTHS[request.param], locale="en-US")
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        snap(page, "failure")
    context.close()


def _quote_of(url: str) -> tuple[str, dict[str, list[str]]]:
    """A quote page's path and its non-empty parameters (the form also sends empty ones)."""
    parts = urlsplit(url)
    return parts.path, parse_qs(parts.query)


def _no_sideways_scroll(page: Page) -> None:
    width = page.viewport_size["width"]  # type: ignore[index]
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def _fully_visible(page: Page, locator) -> None:  # type: ignore[no-untyped-def]
    """``locator`` lies inside the viewport's width, and no scrolled box clips it."""
    box = locator.bounding_box()
    assert box is not None
    width = page.viewport_size["width"]  # type: ignore[index]
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, (box, width)
    clipped = locator.evaluate(
        """element => {
          const mine = element.getBoundingClientRect();
          for (let box = element.parentElement; box; box = box.parentElement) {
            const style = getComputedStyle(box);
            if (style.overflowX === "visible") continue;
            const edge = box.getBoundingClientRect();
            if (mine.left < edge.left - 0.5 || mine.right > edge.right + 0.5) return true;
          }
          return false;
        }"""
    )
    assert clipped is False


def _offer(partner, *, name: str, region: str = Region.NORTH_AMERICA, gpus: int = 4):  # type: ignore[no-untyped-def]
    site = SiteFactory(organization=partner, name=name, region=region)
    gpu_pool(site=site, gpus=gpus)
    return OfferFactory(
        site=site,
        gpu_count=gpus,
        available_from=timezone.now() - timedelta(days=1),
        reserved_price_1m_per_gpu_hour=Decimal("2.0000"),
    )


def test_anyone_browses_offers_and_is_invited_to_sign_up(sized_page: Page, live_url: str) -> None:
    page = sized_page
    width = page.viewport_size["width"]  # type: ignore[index]
    partner = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    _offer(partner, name="Permian Flare 1")
    _offer(partner, name="Muscat Gas 2", region=Region.MIDDLE_EAST)

    page.goto("/")
    expect(page.locator("[data-region-count]")).to_have_text("GPU marketplace · 2 regions")
    _no_sideways_scroll(page)
    snap(page, f"{width}-01-landing")
    page.locator("[data-cta=browse]").click()

    expect(page.get_by_role("heading", name="Find GPU capacity", level=1)).to_be_visible()
    expect(page.locator("[data-offer]")).to_have_count(2)
    _no_sideways_scroll(page)
    snap(page, f"{width}-02-search")

    # A start in the past says why nothing was searched.
    page.get_by_label("Start (UTC)").fill("2020-01-01T00:00")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("[data-search-refused]")).to_have_text(
        "No search was run: Start (UTC): The reservation cannot start in the past."
    )
    expect(page.get_by_text("No offers match")).to_have_count(0)
    _no_sideways_scroll(page)
    snap(page, f"{width}-03-start-in-the-past")

    page.get_by_role("link", name="Clear filters").click()
    page.locator("[data-offer]").filter(has_text="Permian Flare 1").get_by_role(
        "link", name="View"
    ).click()
    expect(page.get_by_role("heading", name="H100 SXM 80GB at Permian Flare 1")).to_be_visible()
    sign_up = page.get_by_role("link", name="Sign up to reserve")
    expect(sign_up).to_be_visible()
    expect(page.locator("[data-auto-renew]")).to_contain_text("On: the contract renews")
    expect(page.locator("[data-early-termination]")).to_have_text(
        "25.00 % of the reserved charge left in the term"
    )
    _fully_visible(page, sign_up)
    _no_sideways_scroll(page)
    snap(page, f"{width}-04-offer")
    assert "Andes Hash" not in page.content()
    offer_path = page.url.split(page.url.split("/marketplace/")[0], 1)[1]
    sign_up.click()
    expect(page).to_have_url(f"{live_url}/accounts/signup/?next={quote(offer_path, safe='/')}")
    expect(page.get_by_role("heading", level=1)).to_be_visible()


def test_quote_sends_the_buyer_to_the_card_page_and_back(
    page: Page,
    live_url: str,
    settings,
    stripe_settings,  # noqa: F811
) -> None:
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    partner = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    offer = _offer(partner, name="Permian Flare 1")
    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True)
    owner = MembershipFactory(organization=buyer, role=Role.OWNER).user
    sign_in(page, owner, live_url)
    page.set_viewport_size(WIDTHS["1366"])

    page.goto(f"/marketplace/offers/{offer.pk}/")
    page.get_by_label("GPUs").fill("2")
    page.get_by_role("button", name="Get a quote").click()
    expect(page.get_by_role("heading", name="Your quote")).to_be_visible()
    quote_url = page.url
    expect(page.get_by_role("button", name="Confirm reservation")).to_have_count(0)
    snap(page, "1366-01-quote-needs-a-card")
    page.get_by_role("link", name="Add a payment method").click()

    expect(page.get_by_role("heading", name="Payment method")).to_be_visible()
    expect(page.locator("[data-return-to]")).to_contain_text("your quote")
    card = page.locator("#card-element")
    card.get_by_placeholder("number").fill("4242424242424242")
    card.get_by_placeholder("exp_month").fill("12")
    card.get_by_placeholder("exp_year").fill("34")
    card.get_by_placeholder("cvc").fill("123")
    card.get_by_placeholder("postal_code").fill("75001")
    snap(page, "1366-02-card")
    page.get_by_role("button", name="Save card").click()

    expect(page.get_by_text("Card saved: Visa ending in 4242")).to_be_visible()
    assert _quote_of(page.url) == _quote_of(quote_url)
    expect(page.get_by_role("button", name="Confirm reservation")).to_be_visible()
    snap(page, "1366-03-back-on-the-quote")
    assert BillingCustomer.objects.get(organization=buyer).card_last4 == "4242"
    page.set_viewport_size(WIDTHS["375"])
    _no_sideways_scroll(page)
    snap(page, "375-03-back-on-the-quote")


def test_every_offer_action_is_visible(sized_page: Page, live_url: str) -> None:
    page = sized_page
    width = page.viewport_size["width"]  # type: ignore[index]
    partner = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    owner = MembershipFactory(organization=partner, role=Role.OWNER).user
    offers = [_offer(partner, name=f"Mining site number {n}", gpus=2) for n in range(3)]
    offers[0].available_until = timezone.now() + timedelta(days=400)
    offers[0].save(update_fields=["available_until"])
    sign_in(page, owner, live_url)

    page.goto("/partner/offers/")
    expect(page.get_by_role("heading", name="Offers", level=1)).to_be_visible()
    _fully_visible(page, page.get_by_role("link", name="New offer"))
    rows = page.locator("[data-offers] tbody tr")
    expect(rows).to_have_count(3)
    for index in range(3):
        row = rows.nth(index)
        for action in ("Edit", "Deactivate"):
            link = row.get_by_role("link", name=action)
            link.scroll_into_view_if_needed()
            expect(link).to_be_visible()
            _fully_visible(page, link)
    _no_sideways_scroll(page)
    wrap = page.locator(".table-wrap").first
    assert wrap.evaluate("box => box.scrollWidth <= box.clientWidth")
    page.evaluate("window.scrollTo(0, 0)")
    snap(page, f"{width}-offers")

    rows.nth(2).get_by_role("link", name="Deactivate").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Deactivate")


CHART_OF = "document.querySelector('canvas[data-chart=cost-per-day]')"


def test_cost_chart_is_drawn_by_chart_js_with_axes_and_units(
    sized_page: Page, live_url: str, settings
) -> None:
    """Issue 16, point 5: the dashboard's cost per day is a Chart.js chart (served by the
    app from npm's package) with titled axes and a value with its unit on hover."""
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    page = sized_page
    width = page.viewport_size["width"]  # type: ignore[index]
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text[:120])
            if "Content Security Policy" in message.text
            else None
        ),
    )
    partner = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    offer = _offer(partner, name="Permian Flare 1")
    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True)
    owner = MembershipFactory(organization=buyer, role=Role.OWNER).user
    checkout.reservation_checkout(
        buyer=buyer,
        offer=offer,
        gpu_count=2,
        starts_at=(timezone.now() + timedelta(minutes=5)).replace(second=0, microsecond=0),
        term_months=1,
        actor=None,
    )
    with time_machine.travel(timezone.now() + timedelta(hours=3), tick=True):
        sign_in(page, owner, live_url)
        page.goto("/dashboard/")
        expect(page.locator("canvas[data-chart=cost-per-day]")).to_be_visible()
        page.wait_for_function(f"() => window.Chart && Chart.getChart({CHART_OF})")
        expect(page.locator("[data-chart-fallback]")).to_be_hidden()
        spec = json.loads(page.locator("#cost-per-day").text_content() or "")
        axes = page.evaluate(
            f"() => {{ const c = Chart.getChart({CHART_OF}); "
            "return [c.options.scales.x.title.text, c.options.scales.y.title.text]; }"
        )
        assert axes == ["Day (UTC)", "Estimated cost (USD)"]
        hover = page.evaluate(
            f"() => {{ const c = Chart.getChart({CHART_OF}); const ds = c.data.datasets[0]; "
            "const last = ds.data.length - 1; "
            "return c.options.plugins.tooltip.callbacks.label("
            "{dataset: ds, parsed: {y: ds.data[last]}}); }"
        )
        today = Decimal(spec["series"][0]["values"][-1])
        assert today > 0
        assert hover == f"Estimated cost: {today:,.2f} USD"
        _no_sideways_scroll(page)
        snap(page, f"{width}-cost-chart")
    assert violations == []
