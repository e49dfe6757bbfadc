"""Demo seeding against the real fleet simulator, and without it."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from accounts.models import AuditEvent
from capacity.agent_client import fetch_info
from capacity.models import GpuDevice, Node, NodeStatus, Offer, Site
from devtools.demo import fleet as demo
from tests.factories import OrganizationFactory


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_fleet(command: list[str], *, port: int) -> Iterator[str]:
    """Run the fleet ``command`` (listening on ``port``) and yield its URL once it answers."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/_admin/fleet", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def fleet_url():
    port = _free_port()
    yield from serve_fleet(
        [sys.executable, "-m", "capacity.agent.fleet", "--nodes=4", f"--port={port}", "--seed=3"],
        port=port,
    )


def _snapshot():
    return (
        list(
            Node.objects.order_by("pk").values_list(
                "pk", "status", "poll_token_ciphertext", "agent_public_key"
            )
        ),
        Site.objects.count(),
        Offer.objects.count(),
        GpuDevice.objects.count(),
        AuditEvent.objects.count(),
    )


@pytest.mark.django_db
def test_seed_fleet_enrolls_against_the_fleet_and_is_idempotent(fleet_url, settings):
    settings.FLEET_URL = fleet_url
    partners = [OrganizationFactory(is_buyer=False, is_partner=True) for _ in range(2)]
    counts = demo.seed_fleet(partners, node_count=4, out=io.StringIO())
    assert counts == {"sites": 7, "nodes": 4, "enrolled": 4}
    nodes = list(Node.objects.order_by("name"))
    assert {node.status for node in nodes} == {NodeStatus.UNREACHABLE}
    assert sorted(node.agent_url for node in nodes) == [f"{fleet_url}/n/{i}" for i in range(4)]
    assert GpuDevice.objects.count() == 32
    first = Node.objects.get(agent_url=f"{fleet_url}/n/0")
    info = fetch_info(first.agent_url, poll_token=first.poll_token())  # the fleet accepts our token
    assert info.public_key == first.agent_public_key
    assert Offer.objects.count() == 4  # one per site with nodes
    before = _snapshot()
    demo.seed_fleet(partners, node_count=4, out=io.StringIO())
    assert _snapshot() == before


@pytest.mark.django_db
def test_seed_fleet_without_fleet_leaves_nodes_pending(settings):
    settings.FLEET_URL = f"http://127.0.0.1:{_free_port()}"
    out = io.StringIO()
    counts = demo.seed_fleet(
        [OrganizationFactory(is_buyer=False, is_partner=True)], node_count=3, out=out
    )
    assert counts == {"sites": 7, "nodes": 3, "enrolled": 0}
    assert list(Node.objects.values_list("status", flat=True)) == [NodeStatus.PENDING] * 3
    assert "did not answer for 3 of 3 nodes" in out.getvalue()
