"""A buyer deploys a catalogue model on their reserved GPUs from the contract page, watches
it go from waiting for the node to running, reads its private model name and the Python
snippet on the page, and calls it through the gateway with the official ``openai`` SDK;
another buyer's key gets 404 for that name (issue 15, point 7).

Everything on the node's side is real: the fleet simulator plays the partner's node
(started with the platform's key, so it takes signed assignments and checks receipts,
and with a runtime that starts what it is assigned at once), metering's sweep runs here
over HTTP as a worker would (it pushes the assignment and reads the workload's state
back, ``tests.gateway.fleet_helpers.sweep_until_polled``), and the gateway is its own
process (``python -m gateway``) on the live server's database.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.db import connections
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import Role, User
from capacity.models import GpuDevice, Node, NodeStatus
from config.gateway_keys import receipt_public_key_b64
from contracts.inference_snippets import KEY_VARIABLE, openai_python_snippet
from contracts.models import (
    Contract,
    InferenceProduct,
    LineApiKey,
    NodeAssignments,
    Workload,
    WorkloadKind,
    WorkloadState,
)
from contracts.terms import add_months
from devtools.gateway_process import GatewayProcess
from devtools.simulated_fleet import FleetProcess, register_fleet_nodes
from tests.billing.stripe_fakes import free_port
from tests.browser.conftest import snap
from tests.contracts.usage_builders import active_contract, inference_line, reserved_line
from tests.factories import (
    ApiKeyFactory,
    MembershipFactory,
    OfferFactory,
    OrganizationFactory,
    UserFactory,
)
from tests.gateway.fleet_helpers import MESSAGES, PROMPT_TOKENS, sweep_until_polled

pytestmark = [pytest.mark.browser]
PASSWORD = "correct-horse-battery"  # tests.factories.UserFactory's
PRODUCT = "llama-3.1-8b-instruct"
# The simulated engine answers " tok0 tok1 …", one token per requested output token.
ANSWER_TOKENS = 5


@dataclass
class World:
    user: User
    contract: Contract
    node: Node
    key: str  # a key of the buyer's organization (tied to no line)
    other_key: str  # another buyer's key, on their inference line of the same product


@pytest.fixture
def fleet(tmp_path) -> Iterator[FleetProcess]:
    """One simulated node with two H100s; assignments run at once."""
    process = FleetProcess(
        nodes=1,
        port=free_port(),
        seed=2031,
        gpus_per_node=2,
        state_dir=tmp_path / "fleet",
        platform_key=receipt_public_key_b64(),
        engine_args=(
            "--engine-ttft-ms=0",
            "--engine-tokens-per-second=0",
            "--pending-seconds=0",
            "--pull-seconds=0",
            "--start-seconds=0",
        ),
    )
    with process:
        yield process


@pytest.fixture
def world(fleet: FleetProcess, live_url: str) -> World:
    """Acme Vision reserves both GPUs of the partner's node for the month; Borealis Labs
    buys the same model on demand."""
    partner = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    [node_id] = register_fleet_nodes(organization=partner, fleet=fleet, site_name="Permian Flare")
    Node.objects.filter(pk=node_id).update(status=NodeStatus.ONLINE)
    node = Node.objects.select_related("site", "gpu_model").get(pk=node_id)
    offer = OfferFactory(site=node.site, gpu_model=node.gpu_model, gpu_count=2)

    buyer = OrganizationFactory(name="Acme Vision", is_buyer=True, is_partner=False)
    user = UserFactory(email="giulia@acme-vision.example")
    MembershipFactory(organization=buyer, user=user, role=Role.OWNER)
    since = timezone.now() - timedelta(days=1)
    contract = active_contract(buyer=buyer, since=since)
    reserved_line(
        contract=contract,
        offer=offer,
        holds=[
            (gpu, since, add_months(since, 1))
            for gpu in GpuDevice.objects.filter(node=node).order_by("index")
        ],
    )
    return World(
        user=user,
        contract=contract,
        node=node,
        key=ApiKeyFactory(organization=buyer, created_by=user).key,
        other_key=_other_buyers_key(),
    )


def _other_buyers_key() -> str:
    other = OrganizationFactory(name="Borealis Labs", is_buyer=True, is_partner=False)
    admin = MembershipFactory(organization=other, role=Role.ADMIN).user
    line = inference_line(
        contract=active_contract(buyer=other, since=timezone.now() - timedelta(days=1)),
        product=InferenceProduct.objects.get(slug=PRODUCT),
        since=timezone.now() - timedelta(days=1),
        input_price=Decimal("0.0500"),
        output_price=Decimal("0.0800"),
    )
    key = ApiKeyFactory(organization=other, created_by=admin)
    LineApiKey.objects.create(line=line, api_key=key)
    return key.key


@pytest.fixture
def gateway(world: World, live_url: str, settings, tmp_path) -> Iterator[GatewayProcess]:
    """The gateway on this test's database; the pages' snippets point at it."""
    process = GatewayProcess(
        port=free_port(),
        env={
            "DJANGO_SETTINGS_MODULE": "config.test_settings",
            "HASHGRID_DB_NAME_OVERRIDE": settings.DATABASES["default"]["NAME"],
            "HASHGRID_SITE_URL": live_url,
        },
        log_path=tmp_path / "gateway.log",
    )
    settings.GATEWAY_URL = process.url
    with process:
        yield process


def sweep_in_a_thread() -> None:
    """Metering's sweep of every node, as beat's next one would run it (in a thread of
    its own: Playwright's event loop holds this one)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            sweep_until_polled()
        except BaseException as error:  # re-raised in the test's thread
            failure.append(error)
        finally:
            connections.close_all()  # this thread's, or the test database stays in use

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the sweep did not finish"
    if failure:
        raise failure[0]


def listed(sdk: openai.OpenAI) -> list[str]:
    """The models the gateway lists for ``sdk``'s key; none while its catalog has not seen
    the deployment yet (a key tied to no inference line of an organization without
    deployments gets 403)."""
    try:
        return [card.id for card in sdk.models.list().data]
    except openai.PermissionDeniedError:
        return []


def chat_once_routed(sdk: openai.OpenAI, model: str):  # type: ignore[no-untyped-def]
    """The first answer once the gateway routes ``model``. Its catalog checks the
    database every second and learns of the deployment, then that it runs (docs/gateway.md
    "Deployments"; slower on a busy machine): until it lists the model the buyer's key
    may not call it, and until it knows it runs the owner gets 503 ``no_healthy_node``."""
    deadline = time.monotonic() + 5
    while model not in listed(sdk):
        assert time.monotonic() < deadline, "the gateway never listed the deployment"
        time.sleep(0.2)
    while True:
        try:
            return sdk.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=ANSWER_TOKENS
            )
        except openai.APIStatusError as error:
            if error.status_code != 503 or error.code != "no_healthy_node":
                raise
            assert time.monotonic() < deadline, "the gateway never routed the deployment"
            time.sleep(0.2)


def test_deploy_a_model_on_reserved_gpus_and_call_it_with_the_openai_sdk(
    page: Page, live_url: str, world: World, gateway: GatewayProcess
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_url)
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(world.user.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))

    page.goto("/contracts/")
    page.get_by_role("link", name=world.contract.reference).click()
    page.locator("[data-deploy-model]").click()
    expect(page.get_by_role("heading", name="Deploy a model on reserved GPUs")).to_be_visible()
    page.get_by_label("Model").select_option(label="Llama 3.1 8B Instruct")
    page.get_by_label("GPUs").fill("1")
    page.get_by_role("button", name="Deploy").click()
    expect(page).to_have_url(re.compile(r"/contracts/workloads/\d+/$"))

    workload = Workload.objects.get()
    model = workload.served_model_name
    assert re.fullmatch(r"d-[0-9a-f]{32}", model)
    assert (workload.kind, workload.node_id, workload.gpus.count()) == (
        WorkloadKind.DEPLOYMENT,
        world.node.pk,
        1,
    )
    expect(page.get_by_text(f"Llama 3.1 8B Instruct deployed as {model}.")).to_be_visible()
    expect(page.locator("[data-workload-state] [data-state]")).to_have_text("Waiting for the node")

    # Beat's next sweep: the signed assignment goes to the node, which runs it at once;
    # the one after reads its state back (embedded in the usage answer, whose list is
    # from before the push on the pushing poll).
    sweep_in_a_thread()
    sweep_in_a_thread()
    workload.refresh_from_db()
    assert workload.state == WorkloadState.RUNNING
    assert NodeAssignments.objects.values_list("generation", "agent_generation").get(
        node=world.node
    ) == (1, 1)
    page.reload()  # the state panel refreshes itself every 3 s; a reload shows it at once
    expect(page.locator("[data-state='running']")).to_have_text("Running")

    # What the buyer copies from the page: the private name, the base URL, the snippet.
    expect(page.locator("[data-served-model]")).to_have_text(model)
    base_url = page.locator("[data-deployment-snippets] [data-base-url]").inner_text()
    assert base_url == f"{gateway.url}/v1"
    python = page.locator("[data-deployment-snippets] [data-snippet='python']")
    python.locator("[data-copy]").click()
    expect(python.locator("[data-copy]")).to_have_text("Copied")
    snippet = page.evaluate("navigator.clipboard.readText()")
    assert snippet == openai_python_snippet(model=model).strip()
    snap(page, "running")

    sdk = openai.OpenAI(base_url=base_url, api_key=world.key, max_retries=0)
    answer = chat_once_routed(sdk, model)
    assert answer.model == model
    assert answer.choices[0].message.content == "".join(f" tok{i}" for i in range(ANSWER_TOKENS))
    assert answer.usage is not None
    assert (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
        answer.usage.total_tokens,
    ) == (PROMPT_TOKENS, ANSWER_TOKENS, PROMPT_TOKENS + ANSWER_TOKENS)
    assert [card.id for card in sdk.models.list().data] == [model]

    # The copied snippet, run as the buyer would with their key in the environment,
    # streams its answer (64 tokens at most, the engine's " tok<i>" each).
    ran = subprocess.run(
        [sys.executable, "-c", snippet],
        env={**os.environ, KEY_VARIABLE: world.key},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (ran.returncode, ran.stderr) == (0, "")
    assert ran.stdout == "".join(f" tok{i}" for i in range(64))

    # Another buyer's key: that name does not exist for them.
    other = openai.OpenAI(base_url=base_url, api_key=world.other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as refused:
        other.chat.completions.create(model=model, messages=MESSAGES, max_tokens=ANSWER_TOKENS)
    assert (refused.value.status_code, refused.value.code) == (404, "model_not_found")
    assert [card.id for card in other.models.list().data] == [PRODUCT]
