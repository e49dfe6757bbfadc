"""The gateway end to end: real agents (``python -m capacity.agent run --simulate``), the
real gateway process, this test's PostgreSQL database and Redis.

Three simulated agents serve for the whole module (their journals live in a temporary
directory; every request has a fresh receipt id, so they never collide). Each test builds
its buyer, contract, inference line, key and nodes, then starts a gateway on them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from accounts.models import Role
from capacity.metering.models import InferenceRequest
from capacity.models import GpuModel, Node, NodeStatus, Site
from config.gateway_keys import receipt_public_key_b64
from contracts.models import Contract, ContractLine, InferenceProduct, LineApiKey, LineKind
from devtools.gateway_process import GatewayProcess
from tests.factories import ApiKeyFactory, ContractFactory, MembershipFactory, OrganizationFactory

PORT_BASE = int(os.environ.get("METERING_TEST_FLEET_PORT", "9640"))
GATEWAY_PORT = PORT_BASE
SECOND_GATEWAY_PORT = PORT_BASE + 1
AGENT_PORTS = (PORT_BASE + 2, PORT_BASE + 3, PORT_BASE + 4)
STORE_URL = os.environ.get("GATEWAY_TEST_STORE_URL", "redis://127.0.0.1:6379/13")
POLL_TOKEN = "gateway-test-poll-token"
PRODUCT = "llama-3.1-8b-instruct"  # 0.0500 in, 0.0800 out per million tokens
OTHER_PRODUCT = "llama-3.1-70b-instruct"


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


@dataclass
class Agent:
    port: int
    public_key: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, fault: str, **options: object) -> None:
        request = urllib.request.Request(
            f"{self.url}/_admin/faults",
            data=json.dumps({"fault": fault, **options}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5):
            pass


@pytest.fixture(scope="module")
def agents(tmp_path_factory) -> Iterator[list[Agent]]:
    directory = tmp_path_factory.mktemp("agents")
    started: list[Agent] = []
    try:
        for index, port in enumerate(AGENT_PORTS):
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "capacity.agent",
                    "run",
                    "--simulate",
                    "--gpus=2",
                    f"--node-id=gateway-test-{index}",
                    f"--journal={directory / f'agent-{index}.db'}",
                    f"--port={port}",
                    f"--poll-token={POLL_TOKEN}",
                    f"--platform-key={receipt_public_key_b64()}",
                    "--engine-ttft-ms=5",
                    "--engine-tokens-per-second=0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            _wait_for_port(port, process)
            info = httpx.get(
                f"http://127.0.0.1:{port}/v1/info",
                headers={"Authorization": f"Bearer {POLL_TOKEN}"},
                timeout=5,
            ).json()
            started.append(Agent(port=port, public_key=info["public_key"], process=process))
        yield started
    finally:
        for agent in started:
            os.killpg(agent.process.pid, signal.SIGTERM)
            agent.process.wait(timeout=10)


@dataclass
class World:
    """A buyer with an active contract, an inference line, a key, and serving nodes."""

    contract: Contract
    line: ContractLine
    key: str
    key_id: int
    line_key: LineApiKey
    nodes: list[Node]
    product: InferenceProduct


@pytest.fixture
def world(agents, transactional_db) -> World:
    buyer = OrganizationFactory(name="Acme AI", is_buyer=True)
    creator = MembershipFactory(organization=buyer, role=Role.ADMIN).user
    partner = OrganizationFactory(name="Permian Power", is_buyer=False, is_partner=True)
    site = Site.objects.create(
        organization=partner,
        name="Permian 1",
        country="US",
        region="north-america",
        latitude=Decimal("31.9"),
        longitude=Decimal("-102.1"),
        power_capacity_kw=2000,
        energy_source="flare-gas",
        energy_price_per_kwh=Decimal("0.021"),
    )
    product = InferenceProduct.objects.get(slug=PRODUCT)
    nodes = []
    for index, agent in enumerate(agents):
        node = Node.objects.create(
            site=site,
            name=f"rack-{index}",
            gpu_model=GpuModel.objects.get(name="H100 SXM 80GB"),
            gpu_count=2,
            cpu_cores=64,
            ram_gib=512,
            agent_url=agent.url,
            status=NodeStatus.ONLINE,
            agent_public_key=agent.public_key,
            enrolled_at=timezone.now(),
        )
        product.nodes.add(node)
        nodes.append(node)
    contract = ContractFactory(buyer=buyer)
    line = ContractLine.objects.create(
        contract=contract,
        kind=LineKind.INFERENCE,
        inference_product=product,
        input_price_per_million_tokens=product.input_price_per_million_tokens,
        output_price_per_million_tokens=product.output_price_per_million_tokens,
        starts_at=contract.starts_at,
    )
    api_key = ApiKeyFactory(organization=buyer, created_by=creator)
    line_key = LineApiKey.objects.create(line=line, api_key=api_key)
    return World(
        contract=contract,
        line=line,
        key=api_key.key,
        key_id=api_key.pk,
        line_key=line_key,
        nodes=nodes,
        product=product,
    )


def gateway_env(**overrides: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "HASHGRID_DB_NAME_OVERRIDE": settings.DATABASES["default"]["NAME"],
        "HASHGRID_GATEWAY_READ_TIMEOUT_MS": "2000",
        "HASHGRID_GATEWAY_CIRCUIT_COOLDOWN_MS": "1500",
        **overrides,
    }


@pytest.fixture
def start_gateway(tmp_path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(*, port: int = GATEWAY_PORT, **env: str) -> GatewayProcess:
        process = GatewayProcess(
            port=port, env=gateway_env(**env), log_path=tmp_path / f"gateway-{port}.log"
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def gateway(world, start_gateway) -> GatewayProcess:
    return start_gateway()


@pytest.fixture
def shared_store() -> Iterator[str]:
    client = redis.Redis.from_url(STORE_URL)
    client.flushdb()
    yield STORE_URL
    client.flushdb()


def logged(request_id: str, *, timeout_s: float = 5.0) -> InferenceRequest:
    """The gateway's row for an attempt, once its log batch has landed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = InferenceRequest.objects.filter(pk=request_id, logged_at__isnull=False).first()
        if row is not None:
            return row
        time.sleep(0.1)
    raise AssertionError(f"request {request_id} was not logged within {timeout_s} s")


def logged_rows(*, count: int, timeout_s: float = 5.0) -> list[InferenceRequest]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = list(
            InferenceRequest.objects.filter(logged_at__isnull=False).order_by(
                "issued_at", "logged_at"
            )
        )
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} requests logged within {timeout_s} s")
