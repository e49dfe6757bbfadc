"""A buyer opens the playground, creates a playground key, sends a prompt and watches the
answer stream from the real gateway (``python -m gateway``) through a real simulated agent
(``python -m capacity.agent run --simulate``), then reads the tokens and their cost.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import Role
from capacity.models import GpuModel, Node, NodeStatus
from config.gateway_keys import receipt_public_key_b64
from contracts.models import ContractLine, InferenceProduct, LineApiKey, LineKind
from devtools.gateway_process import GatewayProcess
from tests.browser.conftest import snap
from tests.factories import (
    ContractFactory,
    MembershipFactory,
    OrganizationFactory,
    SiteFactory,
    UserFactory,
)

pytestmark = [pytest.mark.browser]
PASSWORD = "correct-horse-battery"
PORT_BASE = int(os.environ.get("METERING_TEST_FLEET_PORT", "9640")) + 10
GATEWAY_PORT, AGENT_PORT = PORT_BASE, PORT_BASE + 1
POLL_TOKEN = "playground-test-poll-token"
PROMPT = "Write a haiku about GPUs in a mining site."  # 9 words + 4 per message = 13 tokens


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


@pytest.fixture
def agent(tmp_path) -> Iterator[tuple[str, str]]:
    """A simulated agent (2 GPUs) whose engine answers at once: (its URL, its public key)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capacity.agent",
            "run",
            "--simulate",
            "--gpus=2",
            "--node-id=playground-0",
            f"--journal={tmp_path / 'agent.db'}",
            f"--port={AGENT_PORT}",
            f"--poll-token={POLL_TOKEN}",
            f"--platform-key={receipt_public_key_b64()}",
            "--engine-ttft-ms=5",
            "--engine-tokens-per-second=50",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_port(AGENT_PORT, process)
        url = f"http://127.0.0.1:{AGENT_PORT}"
        info = httpx.get(
            f"{url}/v1/info", headers={"Authorization": f"Bearer {POLL_TOKEN}"}, timeout=5
        ).json()
        yield url, info["public_key"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


@pytest.fixture
def world(agent, live_url, settings):
    """A buyer (owner) with an active contract and a Llama 3.1 8B line; one serving node."""
    agent_url, agent_key = agent
    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True, is_partner=False)
    user = UserFactory(email="giulia@acme.test")  # password: PASSWORD
    MembershipFactory(organization=buyer, user=user, role=Role.OWNER)
    product = InferenceProduct.objects.get(slug="llama-3.1-8b-instruct")
    node = Node.objects.create(
        site=SiteFactory(),
        name="rack-0",
        gpu_model=GpuModel.objects.get(name="H100 SXM 80GB"),
        gpu_count=2,
        cpu_cores=64,
        ram_gib=512,
        agent_url=agent_url,
        status=NodeStatus.ONLINE,
        agent_public_key=agent_key,
        enrolled_at=timezone.now(),
    )
    product.nodes.add(node)
    contract = ContractFactory(buyer=buyer)
    line = ContractLine.objects.create(
        contract=contract,
        kind=LineKind.INFERENCE,
        inference_product=product,
        input_price_per_million_tokens=Decimal("0.0500"),
        output_price_per_million_tokens=Decimal("0.0800"),
        starts_at=contract.starts_at,
    )
    return user, line


@pytest.fixture
def gateway(world, live_url, settings, tmp_path):
    """The gateway on this test's database; CORS allows the live server's origin."""
    process = GatewayProcess(
        port=GATEWAY_PORT,
        env={
            "DJANGO_SETTINGS_MODULE": "config.test_settings",
            "HASHGRID_DB_NAME_OVERRIDE": settings.DATABASES["default"]["NAME"],
            "HASHGRID_SITE_URL": live_url,
        },
        log_path=tmp_path / "gateway.log",
    )
    settings.GATEWAY_URL = process.url  # what the playground page sends to
    with process:
        yield process


def test_playground_streams_an_answer_through_the_gateway(page: Page, world, gateway) -> None:
    user, line = world
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))

    page.get_by_role("link", name="Playground").first.click()
    expect(page.get_by_role("heading", name="Inference playground")).to_be_visible()
    expect(page.get_by_label("Model")).to_have_value(str(line.pk))

    # A playground key, created on demand and kept in this tab only.
    page.get_by_role("button", name="Create a playground key").click()
    expect(page.locator("[data-key-status]")).to_contain_text("Created key hg_")
    link = LineApiKey.objects.select_related("api_key").get(line=line)
    stored = page.evaluate(f"sessionStorage.getItem('hashgrid.playground.key.{line.pk}')")
    assert stored.startswith(link.api_key.prefix)
    assert page.get_by_label("API key").input_value() == stored
    time.sleep(2)  # the gateway's catalog picks a new key up within about a second

    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_label("Max tokens").fill("8")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("[data-answer]")
    # The simulator's engine: one token per chunk, " tok<i>", 50 per second (streamed).
    expect(answer).to_contain_text("tok", timeout=10_000)
    expect(page.locator("[data-stats]")).to_be_visible(timeout=10_000)
    assert answer.inner_text().split() == [f"tok{i}" for i in range(8)]
    expect(page.locator("[data-input-tokens]")).to_have_text("13")
    expect(page.locator("[data-output-tokens]")).to_have_text("8")
    # 13 x 0.05 + 8 x 0.08 per million = 0.00000065 + 0.00000064.
    expect(page.locator("[data-cost]")).to_have_text("0.00000129 USD")
    expect(page.locator("[data-request-id]")).not_to_have_text("—")
    expect(page.locator("[data-error]")).to_be_hidden()
    snap(page, "streamed")
