"""The fleet simulator as metering's test bench: run it, register its nodes, read its truth.

Used by ``bench_metering`` and the metering, attribution and end-to-end tests, never by
production code paths (hence devtools; the simulator itself is ``capacity.agent.fleet``).
Nodes are registered exactly as enrollment would leave them (agent URL, public key,
encrypted poll token, one ``GpuDevice`` per simulated GPU), idempotently: running twice
against the same fleet seed creates nothing new.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from accounts.models import Organization
from capacity.agent.fleet import (
    fleet_gpu_model,
    fleet_node_id,
    fleet_poll_token,
    fleet_private_key,
)
from capacity.agent.protocol import public_key_b64
from capacity.agent.simulator import (
    INFERENCE_PRODUCTS,
    WindowActivity,
    simulated_gpus,
    window_activity,
)
from capacity.agent_client import AgentError, AgentHttp
from capacity.models import GpuDevice, GpuModel, Node, NodeStatus, Site
from config import crypto
from contracts.models import InferenceProduct

# Simulator model key -> catalog name (capacity's seeded GpuModel rows).
CATALOG_NAMES = {
    "h100": "H100 SXM 80GB",
    "a100": "A100 80GB",
    "l40s": "L40S 48GB",
    "rtx4090": "RTX 4090 24GB",
}
TRUTH_QUANTITIES = ("busy_ms", "energy_mj", "input_tokens", "output_tokens", "requests")


@dataclass
class FleetProcess:
    """``python -m capacity.agent.fleet`` as a child process (a context manager)."""

    nodes: int
    port: int
    seed: int = 0
    gpus_per_node: int = 8
    gpu_model: str = "h100"
    window_seconds: int = 60
    backfill_windows: int = 0
    state_dir: Path | None = None
    host: str = "127.0.0.1"
    # The platform's receipt key (base64, ``config.gateway_keys.receipt_public_key_b64``):
    # the nodes then serve receipted inference (protocol v1.1); '' refuses it.
    platform_key: str = ""
    # Flags of the nodes' simulated engine (``--engine-tokens-per-second=0``, ...) and
    # runtime (``--pull-seconds=0``, ...).
    engine_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    # The timeline's first window (Unix minutes for 60 s windows), read at start.
    origin_window: int = field(default=0, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def node_url(self, index: int) -> str:
        return f"{self.url}/n/{index}"

    def start(self, *, timeout_s: float = 30.0) -> FleetProcess:
        command = [
            sys.executable,
            "-m",
            "capacity.agent.fleet",
            f"--nodes={self.nodes}",
            f"--port={self.port}",
            f"--host={self.host}",
            f"--seed={self.seed}",
            f"--gpus-per-node={self.gpus_per_node}",
            f"--gpu-model={self.gpu_model}",
            f"--window-seconds={self.window_seconds}",
            f"--backfill-windows={self.backfill_windows}",
        ]
        if self.state_dir is not None:
            command.append(f"--state-dir={self.state_dir}")
        if self.platform_key:
            command.append(f"--platform-key={self.platform_key}")
        command += list(self.engine_args)
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fleet simulator exited with {self.process.returncode}")
            try:
                self.origin_window = int(self.describe()["origin_window"])  # type: ignore[call-overload]
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("fleet simulator did not start in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> FleetProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _admin(self, path: str, payload: object | None = None) -> dict[str, object]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(  # noqa: S310 (loopback URL we built)
            f"{self.url}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method="GET" if data is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def describe(self) -> dict[str, object]:
        return self._admin("/_admin/fleet")

    def inject(self, fault: str, nodes: Sequence[int], **options: int | str) -> dict[str, object]:
        """Inject a fault (``capacity.agent.faults``) into the given node indexes."""
        return self._admin("/_admin/faults", {"fault": fault, "nodes": list(nodes), **options})

    def requests(self, nodes: Sequence[int] = ()) -> dict[str, object]:
        """Requests the nodes received by ``"METHOD endpoint"``: ``{"totals": {...}}``, and
        ``"nodes": {"i": {...}}`` for the given node indexes."""
        query = "&".join(f"node={index}" for index in nodes)
        return self._admin(f"/_admin/requests?{query}" if query else "/_admin/requests")


def catalog_model(simulator_model: str) -> GpuModel:
    return GpuModel.objects.get(name=CATALOG_NAMES[simulator_model])


# Where simulated nodes stand (a site of the partner that runs them).
SIMULATED_SITE = {
    "country": "US",
    "region": "north-america",
    "latitude": Decimal("31.000000"),
    "longitude": Decimal("-100.000000"),
    "power_capacity_kw": 10_000,
    "energy_source": "flare-gas",
    "energy_price_per_kwh": Decimal("0.030000"),
}


@transaction.atomic
def register_fleet_nodes(
    *,
    organization: Organization,
    fleet: FleetProcess,
    site_name: str = "Simulated fleet",
    count: int | None = None,
) -> list[int]:
    """Create (or find) the site, nodes and GPUs of fleet nodes ``0..count-1``; their ids."""
    count = fleet.nodes if count is None else count
    site, _ = Site.objects.get_or_create(
        organization=organization,
        name=site_name,
        defaults=SIMULATED_SITE,
    )
    models = {
        key: catalog_model(key)
        for key in {fleet_gpu_model(fleet.seed, i, fleet.gpu_model) for i in range(count)}
    }
    now = timezone.now()
    wanted = []
    for index in range(count):
        model_key = fleet_gpu_model(fleet.seed, index, fleet.gpu_model)
        wanted.append(
            Node(
                site=site,
                name=fleet_node_id(fleet.seed, index),
                gpu_model=models[model_key],
                gpu_count=fleet.gpus_per_node,
                cpu_cores=64,
                ram_gib=512,
                agent_url=fleet.node_url(index),
                status=NodeStatus.UNREACHABLE,
                agent_public_key=public_key_b64(fleet_private_key(fleet.seed, index)),
                poll_token_ciphertext=crypto.encrypt_str(fleet_poll_token(fleet.seed, index)),
                enrolled_at=now,
            )
        )
    # A node registered by an earlier run keeps its keys (they derive from the seed) but
    # points at this run's fleet, whose port may differ.
    Node.objects.bulk_create(
        wanted,
        batch_size=2000,
        update_conflicts=True,
        unique_fields=["site", "name"],
        update_fields=["agent_url"],
    )
    by_name = dict(
        Node.objects.filter(site=site, name__in=[n.name for n in wanted]).values_list("name", "pk")
    )
    devices = []
    for index in range(count):
        node_key = fleet_node_id(fleet.seed, index)
        model_key = fleet_gpu_model(fleet.seed, index, fleet.gpu_model)
        for gpu in simulated_gpus(
            seed=fleet.seed, node_key=node_key, count=fleet.gpus_per_node, model=model_key
        ):
            devices.append(
                GpuDevice(
                    node_id=by_name[node_key],
                    uuid=gpu.uuid,
                    index=gpu.index,
                    memory_mib=gpu.spec.memory_mib,
                    model=gpu.spec.name,
                )
            )
    GpuDevice.objects.bulk_create(devices, batch_size=5000, ignore_conflicts=True)
    node_ids = [by_name[fleet_node_id(fleet.seed, index)] for index in range(count)]
    _serve_fleet_products(fleet=fleet, node_ids=node_ids)
    return node_ids


def _serve_fleet_products(*, fleet: FleetProcess, node_ids: list[int]) -> None:
    """Opt the nodes in to the inference products the fleet reports (those the catalogue
    has): metering accepts a product's tokens only from nodes that serve it."""
    slugs = set(INFERENCE_PRODUCTS)
    through = InferenceProduct.nodes.through
    through.objects.bulk_create(
        [
            through(inferenceproduct_id=product_id, node_id=node_id)
            for product_id in InferenceProduct.objects.filter(slug__in=slugs).values_list(
                "pk", flat=True
            )
            for node_id in node_ids
        ],
        ignore_conflicts=True,
    )


@dataclass(frozen=True)
class FleetTruth:
    """Ground truth summed over nodes, plus each node's head seq (to compare cursors)."""

    totals: dict[str, int]
    head_seqs: dict[int, int]
    epochs: dict[int, str]


def fetch_truth(
    fleet: FleetProcess, indexes: Sequence[int], *, concurrency: int = 16
) -> FleetTruth:
    """``/v1/_sim/truth`` of the given nodes, summed (``records`` = windows x GPUs)."""

    async def main() -> list[dict[str, object]]:
        semaphore = asyncio.Semaphore(concurrency)
        async with AgentHttp(
            max_connections=concurrency, read_timeout_s=30.0, request_deadline_s=60.0
        ) as http:

            async def one(index: int) -> dict[str, object]:
                async with semaphore:
                    for _ in range(5):
                        try:
                            answer = await http.get(
                                f"{fleet.node_url(index)}/v1/_sim/truth",
                                token=fleet_poll_token(fleet.seed, index),
                            )
                            return {"index": index, **json.loads(answer.body)}
                        except AgentError:
                            await asyncio.sleep(0.2)
                    raise RuntimeError(f"no truth from fleet node {index}")

            return await asyncio.gather(*(one(i) for i in indexes))

    totals = dict.fromkeys((*TRUTH_QUANTITIES, "records"), 0)
    head_seqs, epochs = {}, {}
    for payload in asyncio.run(main()):
        total = payload["total"]
        assert isinstance(total, dict)
        for name in TRUTH_QUANTITIES:
            totals[name] += int(total[name])
        totals["records"] += int(total["windows"])
        index = int(payload["index"])  # type: ignore[call-overload]
        head_seqs[index] = int(payload["head_seq"])  # type: ignore[call-overload]
        epochs[index] = str(payload["journal_epoch"])
    return FleetTruth(totals=totals, head_seqs=head_seqs, epochs=epochs)


@dataclass(frozen=True)
class FleetRecord:
    """One record a fleet node serves, as the simulator makes it."""

    index: int  # the fleet node
    seq: int
    gpu_index: int
    window_start_ms: int  # Unix ms
    activity: WindowActivity


def fleet_records(fleet: FleetProcess, last_seqs: dict[int, int]) -> Iterator[FleetRecord]:
    """Records ``1..last_seqs[i]`` of each fleet node ``i``, computed here, for nodes
    that were never assigned a workload (their GPUs idle through every window).

    The fleet's records are a pure function of ``(seed, node, gpu, window)``: record
    ``seq`` is GPU ``(seq-1) % G`` in window ``(seq-1) // G`` of the fleet's timeline, and
    a counter reset never changes what is reported (the agent reads the delta). So the
    truth at a cursor can be computed here, whatever the clock did since, unlike
    ``/_sim/truth`` (always at the head, which moves every window); also after the fleet
    stopped (its ``origin_window`` was read when it started).
    """
    window_ms = fleet.window_seconds * 1000
    origin_window = fleet.origin_window
    for index, last_seq in last_seqs.items():
        node_key = fleet_node_id(fleet.seed, index)
        model = fleet_gpu_model(fleet.seed, index, fleet.gpu_model)
        gpus = simulated_gpus(
            seed=fleet.seed, node_key=node_key, count=fleet.gpus_per_node, model=model
        )
        for seq in range(1, last_seq + 1):
            ordinal, gpu_index = divmod(seq - 1, fleet.gpus_per_node)
            activity = window_activity(
                seed=fleet.seed,
                node_key=node_key,
                gpu=gpus[gpu_index],
                ordinal=ordinal,
                window_ms=window_ms,
            )
            yield FleetRecord(
                index, seq, gpu_index, (origin_window + ordinal) * window_ms, activity
            )


def expected_totals(
    fleet: FleetProcess,
    last_seqs: dict[int, int],
    *,
    ref: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> dict[str, int]:
    """Ground truth of the records ``fleet_records`` computes (only those of workload
    ``ref`` and of windows starting in ``[since_ms, until_ms)`` (Unix ms) when given)."""
    totals = dict.fromkeys((*TRUTH_QUANTITIES, "records"), 0)
    for record in fleet_records(fleet, last_seqs):
        if since_ms is not None and record.window_start_ms < since_ms:
            continue
        if until_ms is not None and record.window_start_ms >= until_ms:
            continue
        if ref is not None and record.activity.ref != ref:
            continue
        for name in TRUTH_QUANTITIES:
            totals[name] += getattr(record.activity, name)
        totals["records"] += 1
    return totals
