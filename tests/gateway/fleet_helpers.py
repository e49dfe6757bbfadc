"""What the month-through-the-gateway and SIGKILL tests share: the fleet simulator as a
partner's receipt-serving nodes, what the buyer received per request, and metering's
sweep run here over real HTTP."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from django.utils import timezone

from accounts.models import Organization
from capacity.agent.fleet import fleet_poll_token
from capacity.metering import batch, sweep
from capacity.metering.models import NodePollState
from capacity.models import Node, NodeStatus
from config.gateway_keys import receipt_public_key_b64
from contracts.models import InferenceProduct
from devtools.simulated_fleet import FleetProcess, register_fleet_nodes
from tests.billing.stripe_fakes import free_port

# The simulated engine: ``prompt_tokens`` = words of the prompt + 4 per chat message.
MESSAGES = [{"role": "user", "content": "summarize the month please"}]
PROMPT_TOKENS = 4 + 4


@dataclass
class Delivered:
    """What the buyer's client received for one request (``rid`` = its X-Request-Id)."""

    rid: str
    input_tokens: int
    output_tokens: int


@contextmanager
def running_fleet(
    tmp_path: Path, *, nodes: int, tokens_per_second: int, port: int | None = None
) -> Iterator[FleetProcess]:
    process = FleetProcess(
        nodes=nodes,
        port=port or free_port(),
        seed=2027,
        gpus_per_node=2,
        window_seconds=60,
        backfill_windows=2,
        state_dir=tmp_path / "fleet",
        platform_key=receipt_public_key_b64(),
        engine_args=("--engine-ttft-ms=0", f"--engine-tokens-per-second={tokens_per_second}"),
    )
    with process:
        yield process


def serving_nodes(
    *, partner: Organization, fleet: FleetProcess, product: InferenceProduct
) -> list[int]:
    """Register the fleet's nodes for ``partner``, online and opted in to ``product`` (as
    enrollment and the partner's product page leave them); their ids, in fleet order."""
    node_ids = register_fleet_nodes(organization=partner, fleet=fleet)
    Node.objects.filter(pk__in=node_ids).update(status=NodeStatus.ONLINE)
    product.nodes.add(*node_ids)
    return node_ids


def sweep_now() -> batch.BatchResult:
    """A metering sweep of every node (all made due), each batch polled and stored here
    over HTTP as a worker would; the batches' results summed."""
    total = batch.BatchResult()

    def enqueue(node_ids: list[int]) -> None:
        result = batch.poll_and_store(node_ids, now=now, interval_seconds=60)
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(result, name))

    now = timezone.now()
    NodePollState.objects.update(next_poll_at=now)
    sweep.sweep(now=now, interval_seconds=60, enqueue=enqueue, batch_size=10)
    return total


def sweep_until_polled(*, attempts: int = 3) -> batch.BatchResult:
    """Sweeps until one polls every node without a failure (a poll can time out on a
    busy test machine; metering retries it at the next sweep, as here); that sweep's
    result. Nothing is lost by a failed poll: the next one starts from the cursor."""
    for _ in range(attempts):
        result = sweep_now()
        if result.failed == 0:
            return result
    errors = list(NodePollState.objects.exclude(last_error="").values_list("node_id", "last_error"))
    raise AssertionError(f"every sweep had a failed poll: {result}, {errors}")


def receipt_truth(fleet: FleetProcess, indexes: Iterable[int]) -> dict[str, int]:
    """What the fleet's agents journaled against receipts (``/v1/_sim/truth``), summed:
    ``records``, ``input_tokens``, ``output_tokens``."""
    totals = {"records": 0, "input_tokens": 0, "output_tokens": 0}
    for index in indexes:
        answer = httpx.get(
            f"{fleet.node_url(index)}/v1/_sim/truth",
            headers={"Authorization": f"Bearer {fleet_poll_token(fleet.seed, index)}"},
            timeout=10,
        )
        answer.raise_for_status()
        for name, value in answer.json()["receipts"].items():
            totals[name] += int(value)
    return totals
