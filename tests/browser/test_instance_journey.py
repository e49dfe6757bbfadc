"""A buyer starts an instance on an on-demand GPU line, sees it waiting for the node, then
running with its SSH command, copies the command, stops the instance after confirming,
and finds its seconds and cost on the usage page.

The node's side comes through the hook the metering sweep calls with what an agent
reported (``capacity.metering.assignments.apply_reports``): the agent and the sweep have
their own tests; this journey is the buyer's."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import Role
from contracts.models import Workload, WorkloadState
from tests.browser.conftest import sign_in, snap
from tests.contracts.usage_builders import active_contract, gpu_line
from tests.contracts.workload_builders import HOST, SSH_KEY, agent_reports
from tests.factories import (
    MembershipFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    UserFactory,
    gpu_pool,
)

pytestmark = [pytest.mark.browser]


@pytest.fixture
def buyer_with_gpu_line():
    partner = OrganizationFactory(name="Andes Hash", is_partner=True)
    site = SiteFactory(organization=partner, name="Permian Flare")
    gpu_pool(site=site, gpus=4, per_node=4)
    offer = OfferFactory(site=site, gpu_count=4)
    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True)
    user = UserFactory(email="giulia@acme-vision.example")
    MembershipFactory(organization=buyer, user=user, role=Role.OWNER)
    since = timezone.now() - timedelta(days=1)
    line = gpu_line(contract=active_contract(buyer=buyer, since=since), offer=offer, since=since)
    return user, line


def test_start_connect_copy_stop_and_see_the_seconds(
    page: Page, live_url: str, buyer_with_gpu_line
):
    user, _line = buyer_with_gpu_line
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_url)
    sign_in(page, user, live_url)

    page.goto("/contracts/instances/")
    expect(page.get_by_text("No instances yet")).to_be_visible()
    page.get_by_role("link", name="Start an instance").click()
    expect(page.locator("[data-free-gpus]")).to_have_text("4 GPUs free on one node right now.")
    page.get_by_label("GPUs").fill("2")
    page.get_by_label("SSH public key").fill(SSH_KEY)
    page.get_by_role("button", name="Start instance").click()

    expect(page.locator("[data-workload-state] [data-state]")).to_have_text("Waiting for the node")
    expect(page.locator("[data-ssh-pending]")).to_be_visible()
    workload = Workload.objects.get()
    assert (workload.gpus.count(), workload.ports) == (2, [22])

    now = timezone.now()
    agent_reports(workload, state="running", since=now, now=now, ports={"22": 40022})
    # The state panel refreshes itself every 3 s; a reload shows the same at once.
    page.reload()
    command = f"ssh -p 40022 root@{HOST}"
    expect(page.locator("[data-state='running']")).to_have_text("Running")
    expect(page.locator("[data-ssh-command]")).to_have_text(command)
    copy = page.locator("[data-ssh] [data-copy]")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == command
    snap(page, "running")

    # Stopped a minute and a half later (the clock moves; the live server's too).
    with time_machine.travel(workload.started_at + timedelta(seconds=95), tick=True):
        page.locator("[data-stop]").click()
        expect(page.get_by_role("heading", name="Stop this instance?")).to_be_visible()
        page.get_by_role("button", name="Stop instance").click()
        expect(page.locator("[data-workload-state] [data-state]")).to_have_text("Stopped")
        workload.refresh_from_db()
        held = workload.ended_at - workload.started_at
        seconds = held // timedelta(seconds=1)
        gpu_seconds = 2 * held // timedelta(seconds=1)  # two GPUs, whole seconds
        assert workload.state == WorkloadState.STOPPED and 95 <= seconds < 105
        expect(page.locator("[data-held-seconds]")).to_have_text(
            f"{seconds} s on 2 GPUs ({gpu_seconds} GPU-seconds)"
        )

        page.get_by_role("link", name="Usage").first.click()
        row = page.locator(f"[data-instance='{workload.pk}']")
        expect(row.locator("[data-held-seconds]")).to_have_text(str(seconds))
        expect(row.locator("[data-gpu-seconds]")).to_have_text(str(gpu_seconds))
        expect(row.locator("[data-state]")).to_have_text("Stopped")
        snap(page, "usage")
