"""A partner registers a site and a node, enrolls a real agent, lists GPUs, plans
maintenance, then reads its earnings and the payout of a paid-out statement.

The agent is the reference one (``python -m capacity.agent enroll --simulate``), run as a
subprocess against the live server with the code the node page showed.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.cache import cache
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import Role
from billing.models import Payout, SettlementStatement
from billing.settlement import payouts
from billing.settlement.statements import statement_approve
from capacity.models import Node
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    connect_fake,
    connect_settings,
    localstripe,
    save_card,
    stripe_proxy,
    stripe_settings,
)
from tests.billing.settlement_builders import (
    close_october,
    observe_available,
    onboard,
    reserve_eight_gpus,
)
from tests.browser.conftest import snap
from tests.factories import (
    MembershipFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    UserFactory,
    catalog_gpu,
    gpu_pool,
)

pytestmark = [pytest.mark.browser, pytest.mark.calendar]

EMAIL = "amara@andes-hash.example"
PASSWORD = "flare-gas-and-4-l40s"
SITE = "Permian Flare 1"
NODE = "pf1-n01"
GPU_COUNT = 4
# The simulated agent's --gpu-model l40s reports "NVIDIA L40S" with 46068 MiB: the node
# must be registered with the catalog model of that family.
GPU_MODEL = "L40S 48GB"
AGENT_GPU_MODEL = "l40s"
AGENT_REPORTED_MODEL = "NVIDIA L40S"
AGENT_MEMORY_MIB = "46068"
TIMES = "\N{MULTIPLICATION SIGN}"  # between GPU count and model
EN_DASH = "\N{EN DASH}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _enroll_agent(command: str, *, agent_url: str, journal: Path) -> str:
    """Run the command the page showed, with the node's real URL and a simulated node."""
    argv = shlex.split(command.replace("http://<node-host>:9100", agent_url))
    assert argv[:4] == ["python", "-m", "capacity.agent", "enroll"], argv
    argv[0] = sys.executable
    argv += [
        "--journal",
        str(journal),
        "--simulate",
        "--gpus",
        str(GPU_COUNT),
        "--gpu-model",
        AGENT_GPU_MODEL,
        "--seed",
        "7",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _paid_out_october(partner, localstripe, connect_fake) -> SettlementStatement:  # noqa: F811
    """October at a second site: 8 GPUs reserved from the 15th at $2.10 ($6,854.40), paid
    by the buyer's card; the partner's 80 % ($5,483.52) approved and transferred."""
    site = SiteFactory(organization=partner, name="Duqm Solar")
    gpu_pool(site=site, gpus=8, per_node=4)
    offer = OfferFactory(
        site=site,
        gpu_count=8,
        reserved_price_1m_per_gpu_hour=Decimal("2.1000"),
        available_from=datetime(2025, 1, 1, tzinfo=UTC),
    )
    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True)
    line = reserve_eight_gpus(buyer=buyer, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=line.starts_at.date(),
        until=line.ends_at.date(),
    )
    save_card(buyer, localstripe)
    close_october()
    onboard(partner, connect_fake)
    statement = SettlementStatement.objects.get(partner=partner)
    statement_approve(statement=statement, actor=None)
    payouts.statement_pay(statement=statement, actor=None)
    return statement


def test_partner_enrolls_a_node_plans_maintenance_and_reads_earnings_and_payout(
    page: Page,
    live_url: str,
    settings,
    tmp_path: Path,
    localstripe,  # noqa: F811 (fixtures imported above)
    connect_fake,  # noqa: F811 (fixtures imported above)
) -> None:
    # The page prints the enroll command with the platform's public URL: here, the live server.
    settings.SITE_URL = live_url
    cache.clear()  # the enrollment endpoint is throttled per client
    catalog_gpu(GPU_MODEL)  # the catalog is migration data; an earlier flush may have taken it
    user = UserFactory(username="amara", email=EMAIL, password=PASSWORD)
    organization = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    MembershipFactory(user=user, organization=organization, role=Role.OWNER)

    # -- sign in ------------------------------------------------------------------------
    page.goto("/accounts/login/")
    expect(page.get_by_role("heading", name="Sign in to Hashgrid")).to_be_visible()
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    snap(page, "01-sign-in")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", level=1, name="Andes Hash")).to_be_visible()
    partner = page.locator('[data-section="partner"]')
    expect(partner.get_by_role("heading", name="Register your first site")).to_be_visible()
    snap(page, "02-dashboard-empty")

    # -- a site ---------------------------------------------------------------------------
    partner.get_by_role("link", name="Register a site").click()
    expect(page.get_by_role("heading", level=1, name="New site")).to_be_visible()
    page.get_by_label("Name", exact=True).fill(SITE)
    page.get_by_label("Country", exact=True).fill("US")
    page.get_by_label("Region", exact=True).select_option(label="North America")
    page.get_by_label("Latitude", exact=True).fill("31.968600")
    page.get_by_label("Longitude", exact=True).fill("-102.077900")
    page.get_by_label("Power capacity (kW)", exact=True).fill("2000")
    page.get_by_label("Energy source", exact=True).select_option(label="Flare gas")
    page.get_by_label("Energy price per kWh", exact=True).fill("0.032")
    snap(page, "03-site-form")
    page.get_by_role("button", name="Create site").click()

    expect(page.get_by_role("heading", level=1, name=SITE)).to_be_visible()
    expect(page.locator(".messages")).to_contain_text(f"Site {SITE} created.")
    expect(page.locator(".stat-value")).to_have_text(
        ["North America", "Flare gas", "0.0320 USD", "2000 kW"]
    )
    snap(page, "04-site")

    # -- a node, its one-time code and the exact enroll command ----------------------------
    page.get_by_role("link", name="Add a node").click()
    expect(page.get_by_role("heading", level=1, name="New node")).to_be_visible()
    expect(page.get_by_label("Site", exact=True)).to_have_value(re.compile(r"^\d+$"))
    page.get_by_label("Name", exact=True).fill(NODE)
    page.get_by_label("GPU model", exact=True).select_option(label=GPU_MODEL)
    page.get_by_label("GPUs", exact=True).fill(str(GPU_COUNT))
    page.get_by_label("CPU cores", exact=True).fill("32")
    page.get_by_label("RAM (GiB)", exact=True).fill("256")
    snap(page, "05-node-form")
    page.get_by_role("button", name="Create node").click()

    expect(page.get_by_role("heading", level=1, name=NODE)).to_contain_text("Pending")
    expect(page.locator(".messages")).to_contain_text(
        f"Node {NODE} created. Enroll its agent with the code below."
    )
    secrets = page.locator("[data-secret]")  # the code, then the command (both copyable)
    expect(secrets).to_have_count(2)
    code = secrets.nth(0).inner_text().strip()
    assert re.fullmatch(r"[2-9A-HJKMNP-Z]{4}(-[2-9A-HJKMNP-Z]{4}){4}", code), code
    command = secrets.nth(1).inner_text().strip()
    assert command == (
        f"python -m capacity.agent enroll --platform {live_url} "
        f"--code {code} --url http://<node-host>:9100"
    )
    snap(page, "06-enrollment-code")

    # -- the real agent enrolls with that code --------------------------------------------
    node = Node.objects.get(name=NODE, site__organization__name="Andes Hash")
    agent_url = f"http://127.0.0.1:{_free_port()}"
    output = _enroll_agent(command, agent_url=agent_url, journal=tmp_path / "agent.db")
    assert output.startswith(f"enrolled node {node.pk} with {live_url}: {GPU_COUNT} GPU(s);")

    page.goto(f"/partner/nodes/{node.pk}/")
    # Enrolled, not yet polled: "Awaiting first poll" until metering's first successful poll.
    expect(page.get_by_role("heading", level=1, name=NODE)).to_contain_text("Awaiting first poll")
    enrollment = page.locator("section", has=page.get_by_role("heading", name="Enrollment"))
    expect(enrollment).to_contain_text("Agent enrolled")
    expect(enrollment).to_contain_text(f"version 1.0.0 · {agent_url} · awaiting the first poll")
    expect(page.locator("[data-secret]")).to_have_count(0)
    gpu_rows = page.locator("section", has=page.get_by_role("heading", name="GPUs")).locator(
        "tbody tr"
    )
    expect(gpu_rows).to_have_count(GPU_COUNT)
    uuids = list(node.gpus.order_by("index").values_list("uuid", flat=True))
    assert len(uuids) == GPU_COUNT
    for index, uuid in enumerate(uuids):
        expect(gpu_rows.nth(index).locator("td")).to_have_text(
            [str(index), uuid, AGENT_REPORTED_MODEL, AGENT_MEMORY_MIB]
        )
    snap(page, "07-node-enrolled")

    # -- an offer for the site --------------------------------------------------------------
    page.get_by_role("navigation", name="Primary").get_by_role("link", name="Offers").click()
    expect(page.get_by_role("heading", level=1, name="Offers")).to_be_visible()
    page.get_by_role("link", name="New offer").first.click()
    expect(page.get_by_role("heading", level=1, name="New offer")).to_be_visible()
    page.get_by_label("Site", exact=True).select_option(label=SITE)
    page.get_by_label("GPU model", exact=True).select_option(label=GPU_MODEL)
    page.get_by_label("GPUs listed", exact=True).fill(str(GPU_COUNT))
    page.get_by_label("On-demand price per GPU-hour", exact=True).fill("0.95")
    page.get_by_label("Reserved 1 month, per GPU-hour", exact=True).fill("0.85")
    page.get_by_label("Reserved 3 months, per GPU-hour", exact=True).fill("0.80")
    page.get_by_label("Reserved 6 months, per GPU-hour", exact=True).fill("0.75")
    page.get_by_label("Reserved 12 months, per GPU-hour", exact=True).fill("0.70")
    snap(page, "08-offer-form")
    page.get_by_role("button", name="List offer").click()

    expect(page.get_by_role("heading", level=1, name="Offers")).to_be_visible()
    expect(page.locator(".messages")).to_contain_text("Offer listed.")
    offer_row = page.locator("tbody tr")
    expect(offer_row).to_have_count(1)
    today = timezone.now().strftime("%Y-%m-%d")
    expect(offer_row.locator("td")).to_have_text(
        [
            SITE,
            GPU_MODEL,
            str(GPU_COUNT),
            "0.9500 USD",
            "1 mo 0.8500 3 mo 0.8000 6 mo 0.7500 12 mo 0.7000",
            f"from {today} open-ended",
            "Active",
            re.compile(r"Edit\s+Deactivate"),
        ]
    )
    snap(page, "09-offers")

    # -- a maintenance window ten days ahead ------------------------------------------------
    start = (timezone.now() + timedelta(days=10)).replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(hours=4)
    page.goto(f"/partner/nodes/{node.pk}/")
    page.get_by_role("link", name="Schedule a window").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Schedule a window for {NODE}")
    page.get_by_label("Kind", exact=True).select_option(label="Maintenance")
    page.get_by_label("Start", exact=True).fill(start.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_label("End", exact=True).fill(end.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_label("Reason", exact=True).fill("Replace PSU on rack 3")
    snap(page, "10-window-form")
    page.get_by_role("button", name="Schedule").click()

    expect(page.get_by_role("heading", level=1, name=NODE)).to_be_visible()
    expect(page.locator(".messages")).to_contain_text("Maintenance window scheduled.")
    window_rows = page.locator(
        "section", has=page.get_by_role("heading", name="Maintenance and curtailment")
    ).locator("tbody tr")
    expect(window_rows).to_have_count(1)
    expect(window_rows.locator("td").nth(0)).to_have_text("Maintenance")
    expect(window_rows.locator("td").nth(1)).to_have_text(start.strftime("%Y-%m-%d %H:%M UTC"))
    expect(window_rows.locator("td").nth(2)).to_have_text(end.strftime("%Y-%m-%d %H:%M UTC"))
    expect(window_rows.locator("td").nth(3)).to_have_text("Replace PSU on rack 3")
    snap(page, "11-node-with-window")

    # -- the dashboard shows the fleet ------------------------------------------------------
    page.get_by_role("navigation", name="Primary").get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", level=1, name="Andes Hash")).to_be_visible()
    for key, value in (("sites", "1"), ("nodes", "1"), ("gpus", str(GPU_COUNT)), ("offers", "1")):
        expect(partner.locator(f'[data-stat="{key}"] .stat-value')).to_have_text(value)
    expect(partner.locator("[data-nodes-by-status] [data-status]")).to_have_text(["Unreachable: 1"])
    dashboard_rows = partner.locator("[data-partner-nodes] tbody tr")
    expect(dashboard_rows).to_have_count(1)
    expect(dashboard_rows.locator("td")).to_have_text(
        [NODE, SITE, f"{GPU_COUNT} {TIMES} {GPU_MODEL}", "Awaiting first poll", "never", "—"]
    )
    expect(page.locator('[data-callout="no-offers"]')).to_have_count(0)
    snap(page, "12-dashboard")

    # -- earnings and the payout of October's statement -------------------------------------
    statement = _paid_out_october(organization, localstripe, connect_fake)
    page.goto("/billing/earnings/")
    expect(page.locator("[data-paid-out]")).to_have_text("$5,483.52")
    statement_row = page.locator("[data-statements] tbody tr")
    expect(statement_row).to_have_count(1)
    expect(statement_row.locator("td")).to_have_text(
        [statement.reference, "October 2026", "$5,483.52", "$0.00", "$0.00", "$5,483.52", "Paid"]
    )
    snap(page, "13-earnings")
    page.get_by_role("link", name=statement.reference).click()
    expect(page.locator("[data-payout]")).to_have_text("$5,483.52")
    paid_at = Payout.objects.get(statement=statement).paid_at
    expect(page.get_by_text(f"transferred {paid_at:%Y-%m-%d}")).to_be_visible()
    snap(page, "14-payout")
