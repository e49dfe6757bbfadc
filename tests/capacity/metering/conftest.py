"""Metering fixtures: a registered node with two GPUs, and an in-process fake agent.

The fake agent speaks protocol v1 through ``httpx.MockTransport`` (signed bodies, hash
chain), with knobs to misbehave, so ingest can be tested without sockets. The fault
tests use the real fleet simulator and a real Celery worker instead (test_faults.py;
the ``broker`` and ``worker`` fixtures come from celery_worker.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accounts.models import Role
from capacity.agent.protocol import (
    GENESIS_PREV_HASH,
    SIGNATURE_HEADER,
    USAGE_WORKLOADS_PARAM,
    canonical_json,
    chain_record,
    encode_body,
    public_key_b64,
    sign_body,
    usage_fields,
)
from capacity.metering.models import NodePollState
from capacity.metering.polling import PollTarget
from capacity.models import GpuDevice, GpuModel, Node, NodeStatus, Site
from config import crypto
from contracts.models import InferenceProduct
from tests.capacity.metering.celery_worker import broker, worker  # noqa: F401 (fixtures)
from tests.factories import MembershipFactory

POLL_TOKEN = "test-poll-token"
GPU_UUIDS = ("GPU-00000000-0000-0000-0000-000000000001", "GPU-00000000-0000-0000-0000-000000000002")
# Whole minutes, safely in the past: windows of the fake agent start here.
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


@pytest.fixture
def agent_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def partner_admin(partner_org):
    return MembershipFactory(organization=partner_org, role=Role.ADMIN).user


@pytest.fixture
def node(partner_org, partner_owner, partner_admin, agent_key) -> Node:
    site = Site.objects.create(
        organization=partner_org,
        name="Permian 1",
        country="US",
        region="north-america",
        latitude=Decimal("31.9"),
        longitude=Decimal("-102.1"),
        power_capacity_kw=2000,
        energy_source="flare-gas",
        energy_price_per_kwh=Decimal("0.021"),
    )
    node = Node.objects.create(
        site=site,
        name="rack-1",
        gpu_model=GpuModel.objects.get(name="H100 SXM 80GB"),
        gpu_count=2,
        cpu_cores=64,
        ram_gib=512,
        agent_url="http://agent.test",
        status=NodeStatus.ONLINE,
        agent_public_key=public_key_b64(agent_key),
        poll_token_ciphertext=crypto.encrypt_str(POLL_TOKEN),
        enrolled_at=T0 - timedelta(days=1),
    )
    for index, uuid in enumerate(GPU_UUIDS):
        GpuDevice.objects.create(node=node, uuid=uuid, index=index, memory_mib=81920, model="H100")
    NodePollState.objects.create(node=node, next_poll_at=T0)
    return node


def make_fields(
    gpu: int = 0,
    minute: int = 0,
    *,
    seconds: int = 60,
    kind: str = "allocation",
    ref: str | None = "alloc-1",
    busy_ms: int = 30_000,
    energy_mj: int = 10_000_000,
    input_tokens: int = 0,
    output_tokens: int = 0,
    requests: int = 0,
    start: datetime | None = None,
) -> dict[str, object]:
    window_start = start or T0 + timedelta(minutes=minute)
    return usage_fields(
        gpu_uuid=GPU_UUIDS[gpu],
        window_start=window_start,
        window_end=window_start + timedelta(seconds=seconds),
        workload_kind=kind,
        workload_ref=ref,
        busy_ms=busy_ms,
        energy_mj=energy_mj,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        requests=requests,
    )


@dataclass
class FakeAgent:
    """A node agent in memory: a chained journal, signed answers, optional misbehaviour."""

    key: Ed25519PrivateKey
    epoch: str = "epoch-one"
    records: list[dict[str, object]] = field(default_factory=list)
    token: str = POLL_TOKEN
    # Misbehaviour knobs.
    sign_with: Ed25519PrivateKey | None = None
    status: int = 200
    xid_errors: int = 0
    # Protocol v1.1: the workloads it lists (None: a v1 agent, no ``assignments`` member),
    # and whether its usage answers embed them when the platform's digest differs (False:
    # an agent from before the ``workloads`` parameter, read with ``GET /v1/workloads``).
    workloads: list[dict[str, object]] | None = None
    embeds_workloads: bool = True
    requests_seen: list[str] = field(default_factory=list)

    def append(self, *entries: dict[str, object]) -> None:
        for fields in entries:
            prev = str(self.records[-1]["hash"]) if self.records else GENESIS_PREV_HASH
            self.records.append(chain_record(fields, seq=len(self.records) + 1, prev_hash=prev))

    def new_epoch(self, epoch: str) -> None:
        self.epoch, self.records = epoch, []

    def _respond(self, payload: object) -> httpx.Response:
        body = encode_body(payload)
        signature = sign_body(self.sign_with or self.key, body)
        return httpx.Response(self.status, content=body, headers={SIGNATURE_HEADER: signature})

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests_seen.append(str(request.url))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return httpx.Response(401, content=b'{"error":"unauthorized"}')
        if request.url.path == "/v1/health":
            gpus = [
                {
                    "gpu_uuid": uuid,
                    "utilization_pct": 50,
                    "memory_used_mib": 1000,
                    "temperature_c": 50,
                    "power_mw": 300_000,
                    "xid_errors": self.xid_errors,
                }
                for uuid in GPU_UUIDS
            ]
            return self._respond({"node_id": "n", "gpus": gpus, "time": "2026-01-05T10:00:00Z"})
        if request.url.path == "/v1/workloads" and self.workloads is not None:
            return self._respond({"generation": 1, "workloads": self.workloads})
        after = int(request.url.params.get("after", 0))
        limit = int(request.url.params.get("limit", 500))
        page = [r for r in self.records if int(r["seq"]) > after][:limit]
        head = self.records[-1] if self.records else None
        answer: dict[str, object] = {
            "journal_epoch": self.epoch,
            "records": page,
            "head_seq": int(head["seq"]) if head else 0,
            "head_hash": str(head["hash"]) if head else GENESIS_PREV_HASH,
        }
        if self.workloads is not None:
            held = hashlib.sha256(canonical_json(self.workloads).encode()).hexdigest()
            member: dict[str, object] = {"generation": 1, "digest": held}
            platform_digest = request.url.params.get(USAGE_WORKLOADS_PARAM)
            if self.embeds_workloads and platform_digest not in (None, held):
                member["workloads"] = self.workloads
            answer["assignments"] = member
        return self._respond(answer)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


@pytest.fixture
def fake_agent(agent_key) -> FakeAgent:
    return FakeAgent(key=agent_key)


def loads(body: bytes) -> object:
    return json.loads(body)


def bare_target(agent_url: str, *, node_id: int = 1) -> PollTarget:
    """A target with no database behind it: for polls that must fail before any page."""
    return PollTarget(
        node_id=node_id,
        agent_url=agent_url,
        token="t",
        public_key="",
        journal_epoch="",
        last_seq=0,
        last_hash="",
        gpu_window_ends={},
        gpus={},
    )


@pytest.fixture
def llama(node) -> InferenceProduct:
    """An inference product the node serves, at 1,000 tokens per GPU-second."""
    product = InferenceProduct.objects.create(
        slug="llama",
        name="Llama",
        input_price_per_million_tokens=Decimal("0.2000"),
        output_price_per_million_tokens=Decimal("0.6000"),
        max_tokens_per_second_per_gpu=1_000,
    )
    product.nodes.add(node)
    return product
