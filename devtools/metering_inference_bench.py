"""``bench_metering --inference-requests N``: metering of receipt records (protocol v1.1).

Builds, before the clock starts, what N inference requests leave in ``--nodes`` agents'
journals: one receipt record per request, its receipt signed with the platform's key as
the gateway signs it, chained, paged (1,000 records a page) and signed with the node's
agent key, exactly as an agent answers ``/v1/usage``. Then times what the platform does
with them: one in-process batch per ``--batch-size`` nodes through the real code
(``batch.poll_and_store``: HTTP client, signature and chain checks, receipt validation,
ingest's statement with the request rows, billed tokens and the hourly rollup), the
pages served from memory by an ``httpx.MockTransport`` (so no fleet is needed and the
agents cost nothing). Checks that every request was billed exactly its tokens, and
reports requests per second, the wall time and the CPU per request of this process and
of its PostgreSQL backend (from ``/proc``, when the server runs on this machine).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Organization
from capacity.agent.protocol import (
    GENESIS_PREV_HASH,
    SIGNATURE_HEADER,
    chain_record,
    encode_body,
    format_time,
    public_key_b64,
    sign_body,
)
from capacity.agent.receipts import Receipt, sign_receipt
from capacity.metering import batch
from capacity.metering.models import (
    GpuAvailabilityDay,
    HourlyUsage,
    InferenceRequest,
    InferenceUsageHour,
    NodePollState,
    QuarantinedRecord,
    UsageRecord,
)
from capacity.metering.polling import PAGE_LIMIT
from capacity.models import GpuDevice, GpuModel, Node, NodeStatus, Site
from config import crypto
from config.gateway_keys import receipt_signing_key
from devtools.simulated_fleet import SIMULATED_SITE

SITE_NAME = "Metering inference bench"
POLL_TOKEN = "bench-inference-poll-token"  # noqa: S105 (a bench agent's, not a secret)
EPOCH = "bench-inference"
# The bench's line and key ids: plain integers on metering's side.
LINE_ID, KEY_ID = 900_001, 900_002


@dataclass
class BenchAgent:
    """One node's journal, paged and signed ahead of time (``/v1/usage?after=``)."""

    node: Node
    key: Ed25519PrivateKey
    gpu_uuid: str
    pages: dict[int, bytes] = field(default_factory=dict)
    head: tuple[int, str] = (0, GENESIS_PREV_HASH)


def _bench_nodes(organization: Organization, count: int) -> list[BenchAgent]:
    """``count`` online nodes of one GPU each at the bench site (created once, keys new
    every run), their metering state purged."""
    site, _ = Site.objects.get_or_create(
        organization=organization,
        name=SITE_NAME,
        defaults=SIMULATED_SITE,
    )
    model = GpuModel.objects.order_by("pk").first()
    if model is None:
        raise RuntimeError("no GPU model in the catalogue: run migrate first")
    existing = list(Node.objects.filter(site=site).order_by("pk"))
    for index in range(len(existing), count):
        node = Node.objects.create(
            site=site,
            name=f"inference-bench-{index:05d}",
            gpu_model=model,
            gpu_count=1,
            cpu_cores=64,
            ram_gib=512,
            agent_url=f"http://bench-{index}.test",
            status=NodeStatus.ONLINE,
            poll_token_ciphertext=crypto.encrypt_str(POLL_TOKEN),
            enrolled_at=timezone.now(),
        )
        GpuDevice.objects.create(
            node=node, uuid=f"GPU-bench-{index:08d}", index=0, memory_mib=81920, model="H100"
        )
        existing.append(node)
    nodes = existing[:count]
    node_ids = [node.pk for node in nodes]
    with transaction.atomic():
        InferenceUsageHour.objects.filter(node_id__in=node_ids).delete()
        InferenceRequest.objects.filter(node_id__in=node_ids).delete()
        for model_class in (UsageRecord, HourlyUsage, QuarantinedRecord, NodePollState):
            model_class.objects.filter(node_id__in=node_ids).delete()
        GpuAvailabilityDay.objects.filter(gpu__node_id__in=node_ids).delete()
    agents = []
    now = timezone.now()
    for node in nodes:
        key = Ed25519PrivateKey.generate()
        node.agent_public_key = public_key_b64(key)
        node.status = NodeStatus.ONLINE
        node.save(update_fields=["agent_public_key", "status"])
        NodePollState.objects.create(node=node, next_poll_at=now)
        gpu_uuid = GpuDevice.objects.filter(node=node).values_list("uuid", flat=True).get()
        agents.append(BenchAgent(node=node, key=key, gpu_uuid=gpu_uuid))
    return agents


def _journal(agent: BenchAgent, requests: int, *, now_s: int) -> tuple[int, int]:
    """Fill ``agent.pages`` with ``requests`` receipt records; their (input, output)
    token totals."""
    signing_key = receipt_signing_key()
    records, prev_hash, totals = [], GENESIS_PREV_HASH, [0, 0]
    for seq in range(1, requests + 1):
        input_tokens, output_tokens = 20 + seq % 300, 1 + seq % 500
        receipt = Receipt(
            v=1,
            rid=uuid.uuid4().hex,
            node=agent.node.pk,
            agent=agent.node.agent_public_key,
            line=LINE_ID,
            key=KEY_ID,
            product="bench-llm",
            max_input_tokens=4_096,
            max_output_tokens=4_096,
            iat=now_s - 30,
        )
        ended = timezone.now().replace(microsecond=0) - timedelta(seconds=20)
        record = chain_record(
            {
                "gpu_uuid": agent.gpu_uuid,
                "window_start": format_time(ended - timedelta(seconds=2)),
                "window_end": format_time(ended),
                "workload": {
                    "kind": "inference",
                    "ref": receipt.rid,
                    "receipt": sign_receipt(signing_key, receipt),
                },
                "busy_ms": 0,
                "energy_mj": 0,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "requests": 1,
            },
            seq=seq,
            prev_hash=prev_hash,
        )
        prev_hash = str(record["hash"])
        records.append(record)
        totals[0] += input_tokens
        totals[1] += output_tokens
    agent.head = (requests, prev_hash)
    for after in range(0, requests, PAGE_LIMIT):
        agent.pages[after] = encode_body(
            {
                "journal_epoch": EPOCH,
                "records": records[after : after + PAGE_LIMIT],
                "head_seq": requests,
                "head_hash": prev_hash,
            }
        )
    return totals[0], totals[1]


def _transport(agents: list[BenchAgent]) -> httpx.MockTransport:
    by_host = {httpx.URL(agent.node.agent_url).host: agent for agent in agents}
    health = {}
    for agent in agents:
        body = encode_body(
            {
                "node_id": agent.node.name,
                "gpus": [
                    {
                        "gpu_uuid": agent.gpu_uuid,
                        "utilization_pct": 50,
                        "memory_used_mib": 1000,
                        "temperature_c": 50,
                        "power_mw": 300_000,
                        "xid_errors": 0,
                    }
                ],
                "time": format_time(timezone.now().replace(microsecond=0)),
            }
        )
        health[agent.node.agent_url] = (body, sign_body(agent.key, body))
    signatures = {
        (agent.node.agent_url, after): sign_body(agent.key, body)
        for agent in agents
        for after, body in agent.pages.items()
    }

    def handle(request: httpx.Request) -> httpx.Response:
        agent = by_host[request.url.host]
        if request.url.path == "/v1/health":
            body, signature = health[agent.node.agent_url]
        else:
            after = int(request.url.params.get("after", 0))
            body = agent.pages.get(after) or encode_body(
                {
                    "journal_epoch": EPOCH,
                    "records": [],
                    "head_seq": agent.head[0],
                    "head_hash": agent.head[1],
                }
            )
            signature = signatures.get((agent.node.agent_url, after)) or sign_body(agent.key, body)
        return httpx.Response(200, content=body, headers={SIGNATURE_HEADER: signature})

    return httpx.MockTransport(handle)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    *, organization: Organization, nodes: int, requests: int, batch_size: int, interval: int
) -> dict[str, object]:
    agents = _bench_nodes(organization, nodes)
    now_s = int(timezone.now().timestamp())
    truth = [0, 0]
    for index, agent in enumerate(agents):
        share = requests // nodes + (1 if index < requests % nodes else 0)
        served_in, served_out = _journal(agent, share, now_s=now_s)
        truth[0] += served_in
        truth[1] += served_out
    transport = _transport(agents)
    node_ids = [agent.node.pk for agent in agents]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend_pid,) = cursor.fetchone()
    backend_before = cpu_seconds(backend_pid)
    cpu_before, started = time.process_time(), time.perf_counter()
    for first in range(0, len(node_ids), batch_size):
        batch.poll_and_store(
            node_ids[first : first + batch_size],
            now=timezone.now(),
            interval_seconds=interval,
            transport=transport,
        )
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    backend_after = cpu_seconds(backend_pid)
    backend = (
        backend_after - backend_before
        if backend_after is not None and backend_before is not None
        else None
    )
    billed = InferenceUsageHour.objects.filter(node_id__in=node_ids).aggregate(
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        requests=Sum("requests"),
    )
    stored = InferenceRequest.objects.filter(node_id__in=node_ids, usage_record__isnull=False)
    exact = (
        billed == {"input_tokens": truth[0], "output_tokens": truth[1], "requests": requests}
        and stored.count() == requests
        and not QuarantinedRecord.objects.filter(node_id__in=node_ids).exists()
    )
    per_request_us = 1e6 / requests
    return {
        "mode": "inference",
        "nodes": nodes,
        "requests": requests,
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1),
        "exact": exact,
        "worker_cpu_us_per_request": round(cpu * per_request_us, 1),
        "postgres_cpu_us_per_request": (
            round(backend * per_request_us, 1) if backend is not None else None
        ),
        "cpu_us_per_request": (
            round((cpu + backend) * per_request_us, 1) if backend is not None else None
        ),
        "billed_tokens": [truth[0], truth[1]],
    }
