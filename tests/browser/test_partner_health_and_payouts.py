"""Issue 16, points 7 and 9 in a browser: the node page draws its health history with
Chart.js (axes with units, values on hover), and "Set up payouts with Stripe" goes
through Stripe Connect onboarding and back — or says what Stripe answered."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import Role
from billing.models import ConnectAccount
from capacity.metering.models import NodeHealthDay
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    connect_fake,
    connect_settings,
    localstripe,
    stripe_proxy,
    stripe_settings,
)
from tests.browser.conftest import sign_in, snap
from tests.factories import MembershipFactory, OrganizationFactory, SiteFactory, gpu_pool

pytestmark = pytest.mark.browser

THERMAL = "document.querySelector('canvas[data-chart=node-health-thermal]')"


def _partner_owner():  # type: ignore[no-untyped-def]
    partner = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    return partner, MembershipFactory(organization=partner, role=Role.OWNER).user


def test_node_page_draws_health_history(page: Page, live_url: str) -> None:
    partner, owner = _partner_owner()
    site = SiteFactory(organization=partner, name="Permian Flare 1")
    node = gpu_pool(site=site, gpus=4, per_node=4)[0].node
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
    NodeHealthDay.objects.create(
        node=node,
        day=today,
        samples=2,
        utilization_pct_sum=100,
        temperature_c_sum=120,
        temperature_c_max=62,
        power_mw_sum=3_100_000,  # 1,550 W mean
    )
    sign_in(page, owner, live_url)
    page.goto(f"/partner/nodes/{node.pk}/")
    expect(page.get_by_role("heading", name="Health, last 14 days (UTC)")).to_be_visible()
    page.wait_for_function(f"() => window.Chart && Chart.getChart({THERMAL})")
    axes = page.evaluate(
        f"() => {{ const o = Chart.getChart({THERMAL}).options.scales; "
        "return [o.x.title.text, o.y.title.text, o.y1.title.text]; }"
    )
    assert axes == ["Day (UTC)", "Temperature (°C)", "Power (W)"]
    hover = page.evaluate(
        f"() => {{ const c = Chart.getChart({THERMAL}); const ds = c.data.datasets[1]; "
        "const last = ds.data.length - 1; "
        "return [c.data.labels[last], c.options.plugins.tooltip.callbacks.label("
        "{dataset: ds, parsed: {y: ds.data[last]}})]; }"
    )
    assert hover == [f"{today:%Y-%m-%d}", "Power, all GPUs (mean): 1,550 W"]
    # A day without reports is a gap, not a zero.
    first = page.evaluate(f"() => Chart.getChart({THERMAL}).data.datasets[0].data[0]")
    assert first is None
    # Newest day first; no availability measured yet on a node created just now.
    page.get_by_text("Figures per day").click()
    cells = page.locator("[data-health-table] tbody tr").first.locator("td").all_inner_texts()
    assert cells == [f"{today:%Y-%m-%d}", "50.0", "—", "60.0", "62", "1550.0", "2"]
    snap(page, "node-health")


def test_payout_setup_reports_a_refusal_then_onboards_through_stripe(
    page: Page,
    live_url: str,
    connect_settings,  # noqa: F811
    connect_fake,  # noqa: F811
) -> None:
    partner, owner = _partner_owner()
    sign_in(page, owner, live_url)
    # A Stripe without Connect (localstripe alone) answers 404: said as a refusal.
    connect_settings.STRIPE_CONNECT_API_BASE = ""
    page.goto("/billing/earnings/")
    page.get_by_role("button", name="Set up payouts with Stripe").click()
    expect(page.get_by_text("Stripe refused the request (404)")).to_be_visible()
    expect(page.get_by_text("cannot be reached")).to_have_count(0)
    # With the Connect emulator make run starts: onboarding at "Stripe" and back.
    # (The page's policy lets its form redirect to the emulator's origin: load it again.)
    connect_settings.STRIPE_CONNECT_API_BASE = connect_fake.url
    page.goto("/billing/earnings/")
    page.get_by_role("button", name="Set up payouts with Stripe").click()
    expect(
        page.get_by_text("Your payout account is ready: statements will be paid to it.")
    ).to_be_visible()
    account = ConnectAccount.objects.get(partner=partner)
    expect(page.get_by_text(account.stripe_account_id)).to_be_visible()
    assert account.can_receive_payouts
    snap(page, "payouts-ready")
