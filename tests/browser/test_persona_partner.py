"""Issue 16 as a partner tries it (points 7-10 and 14), in one browser tab: the fleet on
the dashboard, a node's health history and maintenance, a new node's complete
enrollment steps, earnings per day, GPU and site for a closed month (and their CSV),
payouts set up through the Connect emulation, the offers table whose actions stay in
sight, the status page.

Every page is captured at 1366 px and 375 px under ``<artifacts>/screenshots/partner/``
and fails when a main action overflows (tests/browser/layout.py). The chart's values on
hover and a refused Connect are test_partner_health_and_payouts's.
"""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from billing.models import ConnectAccount
from capacity.metering.models import NodeHealthDay
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    connect_fake,
    connect_settings,
    devices,
    localstripe,
    offer,
    save_card,
    site,
    stripe_proxy,
    stripe_settings,
)
from tests.billing.settlement_builders import close_october, observe_available, reserve_eight_gpus
from tests.browser.conftest import sign_in
from tests.browser.layout import check_layout
from tests.factories import NodeWindowFactory, OfferFactory, SiteFactory, catalog_gpu, gpu_pool

pytestmark = pytest.mark.browser

PERSONA = "partner"
THERMAL = "document.querySelector('canvas[data-chart=node-health-thermal]')"
PERCENT = "document.querySelector('canvas[data-chart=node-health-percent]')"
PER_DAY = "document.querySelector('canvas[data-chart=earnings-per-day]')"


def _check(page: Page, name: str) -> None:
    check_layout(page, persona=PERSONA, name=name)


def _chart_axes(page: Page, canvas: str) -> list[str]:
    """The titles of a drawn Chart.js chart's axes, x first."""
    page.wait_for_function(f"() => window.Chart && Chart.getChart({canvas})")
    return page.evaluate(
        f"() => Object.values(Chart.getChart({canvas}).options.scales)"
        ".map(scale => scale.title.text)"
    )


@pytest.fixture
def october(buyer_org, offer, devices, localstripe):  # noqa: F811
    """Eight GPUs of Permian Flare 1 (two nodes of four) reserved by Acme Vision from
    15 October at $2.10, paid; October closed: the partner's statement is a draft."""
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
    )
    save_card(buyer_org, localstripe)
    close_october()
    return devices


def test_partner_reads_health_enrolls_a_node_reads_earnings_and_sets_up_payouts(
    page: Page,
    live_url: str,
    settings,
    partner_org,
    partner_owner,
    site,  # noqa: F811
    october,
    connect_settings,  # noqa: F811
    connect_fake,  # noqa: F811
) -> None:
    settings.SITE_URL = live_url
    nodes = sorted({device.node for device in october}, key=lambda node: node.pk)
    node = nodes[0]
    today = timezone.now().date()
    NodeHealthDay.objects.create(
        node=node,
        day=today - timedelta(days=1),
        samples=4,
        utilization_pct_sum=300,
        temperature_c_sum=270,
        temperature_c_max=71,
        power_mw_sum=8_800_000,  # 2,200 W mean
    )
    NodeWindowFactory(
        node=node,
        reason="Replace PSU on rack 3",
    )
    # A second site and offer: the offers table has two rows of actions.
    duqm = SiteFactory(organization=partner_org, name="Duqm Solar and Flare Gas Site 2")
    gpu_pool(site=duqm, gpus=2)
    OfferFactory(site=duqm, gpu_count=2, available_from=timezone.now() - timedelta(days=1))
    sign_in(page, partner_owner, live_url)
    page.set_viewport_size({"width": 1366, "height": 768})

    # -- the fleet at a glance ----------------------------------------------------------
    page.goto("/dashboard/")
    expect(page.get_by_role("heading", level=1, name="Andes Hash")).to_be_visible()
    partner = page.locator('[data-section="partner"]')
    expect(partner.locator('[data-stat="gpus"] .stat-value')).to_have_text("10")
    _check(page, "dashboard")
    page.goto("/partner/sites/")
    _check(page, "sites")
    page.goto("/partner/nodes/")
    _check(page, "nodes")

    # -- point 7: the node's health per UTC day, its windows ----------------------------
    page.goto(f"/partner/nodes/{node.pk}/")
    expect(page.get_by_role("heading", name="Health, last 14 days (UTC)")).to_be_visible()
    assert _chart_axes(page, PERCENT) == ["Day (UTC)", "Percent (%)"]
    assert _chart_axes(page, THERMAL) == ["Day (UTC)", "Temperature (°C)", "Power (W)"]
    page.get_by_text("Figures per day").click()
    cells = page.locator("[data-health-table] tbody tr").nth(1).locator("td").all_inner_texts()
    assert cells == [
        f"{today - timedelta(days=1):%Y-%m-%d}",
        "75.0",
        "—",
        "67.5",
        "71",
        "2200.0",
        "4",
    ]
    windows = page.locator(
        "section", has=page.get_by_role("heading", name="Maintenance and curtailment")
    )
    expect(windows.get_by_role("link", name="Cancel")).to_be_visible()
    _check(page, "node")

    # -- point 8: a new node's complete enrollment steps ---------------------------------
    page.goto(f"/partner/sites/{site.pk}/")
    _check(page, "site")
    page.get_by_role("link", name="Add a node").click()
    page.get_by_label("Name", exact=True).fill("pf1-n03")
    page.get_by_label("GPU model", exact=True).select_option(label=catalog_gpu().name)
    page.get_by_label("GPUs", exact=True).fill("4")
    page.get_by_label("CPU cores", exact=True).fill("32")
    page.get_by_label("RAM (GiB)", exact=True).fill("256")
    _check(page, "node-form")
    page.get_by_role("button", name="Create node").click()
    steps = page.locator("[data-enrollment-steps] > li")
    expect(steps.locator("h3")).to_have_text(
        ["Install the agent", "Enroll with the code", "Run it as a service", "Let the platform in"]
    )
    code = page.locator("[data-secret]").first.inner_text().strip()
    expect(steps.nth(1).locator("pre")).to_contain_text(f"--code {code}")
    page.locator("[data-systemd-unit] summary").click()
    expect(page.locator("[data-systemd-unit] pre")).to_contain_text("[Service]")
    _check(page, "node-enrollment")

    # -- point 9: earnings per day, per node and GPU, per site ---------------------------
    page.goto("/billing/earnings/")
    expect(page.locator("[data-statements] tbody tr td").nth(1)).to_have_text("October 2026")
    _check(page, "earnings")
    page.locator("[data-earnings-daily]").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Earnings per day, October 2026")
    expect(page.locator("[data-month-total]")).to_have_text("$5,483.52")
    assert _chart_axes(page, PER_DAY)[0] == "Day (UTC)"
    expect(page.locator("[data-per-site] tbody tr td")).to_have_text(
        ["Permian Flare 1", "$5,483.52"]
    )
    per_node = page.locator("[data-per-node] tbody tr")
    for index, each in enumerate(nodes):
        expect(per_node.nth(index).locator("td")).to_have_text(
            ["Permian Flare 1", each.name, "4", "$2,741.76", "$685.44"]
        )
    _check(page, "earnings-per-day")
    response = page.request.get(page.locator("[data-daily-csv]").get_attribute("href") or "")
    rows = list(csv.reader(io.StringIO(response.text())))
    assert rows[0] == [
        "day_utc",
        "site",
        "node",
        "gpus",
        "your_share_usd",
        "your_share_per_gpu_usd",
    ]
    assert sum(Decimal(row[4]) for row in rows[1:]) == Decimal("5483.52")

    # -- point 9: payouts set up through Stripe Connect (the emulation) and back ---------
    page.goto("/billing/earnings/")
    page.get_by_role("button", name="Set up payouts with Stripe").click()
    expect(
        page.get_by_text("Your payout account is ready: statements will be paid to it.")
    ).to_be_visible()
    account = ConnectAccount.objects.get(partner=partner_org)
    expect(page.get_by_text(account.stripe_account_id)).to_be_visible()
    _check(page, "earnings-payouts-ready")

    # -- point 10: every offer action in sight ------------------------------------------
    page.goto("/partner/offers/")
    rows = page.locator("[data-offers] tbody tr")
    expect(rows).to_have_count(2)
    for index in range(2):
        for action in ("Edit", "Deactivate"):
            expect(rows.nth(index).get_by_role("link", name=action)).to_be_visible()
    _check(page, "offers")  # fails should an action hide behind a sideways scroll
    rows.nth(1).get_by_role("link", name="Deactivate").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Deactivate")
    _check(page, "offer-deactivate")

    # -- point 14 --------------------------------------------------------------------------
    page.get_by_role("link", name="System status").click()
    expect(page.locator("[data-overall]")).to_have_text("All systems operational.")
    _check(page, "status")
