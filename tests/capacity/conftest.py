"""Fixtures for the capacity tests: a partner's site and node, an agent's key and GPUs."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import NodeFactory, SiteFactory


@pytest.fixture
def site(partner_org):
    return SiteFactory(organization=partner_org, name="Permian Flare 1")


@pytest.fixture
def node(site):
    return NodeFactory(site=site, name="pf1-n01", gpu_count=2)


@pytest.fixture
def other_site(other_org):
    return SiteFactory(organization=other_org, name="Other Site")


@pytest.fixture
def other_node(other_site):
    return NodeFactory(site=other_site, name="other-n01", gpu_count=2)


@pytest.fixture
def agent_public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def h100_inventory(count: int, *, prefix: str = "GPU-aaaa") -> list[dict[str, object]]:
    return [
        {"uuid": f"{prefix}-{index:04d}", "model": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}
        for index in range(count)
    ]


@pytest.fixture
def anonymous_api() -> APIClient:
    return APIClient()


@pytest.fixture
def partner_api(partner_owner) -> APIClient:
    client = APIClient()
    client.force_login(partner_owner)
    return client


@pytest.fixture
def other_api(other_owner) -> APIClient:
    client = APIClient()
    client.force_login(other_owner)
    return client


@pytest.fixture
def plain_client() -> Client:
    return Client()
