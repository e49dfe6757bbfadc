"""Receipted inference metered end to end over real HTTP: requests with receipts the
platform signed go to a fleet node's agent (protocol v1.1), the agent journals one
record per request, a poll stores them; every request is billed exactly the tokens the
engine served (or the least of both witnesses when the gateway logged fewer)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.utils import timezone

from capacity.agent.receipts import RECEIPT_HEADER, Receipt, sign_receipt
from capacity.metering import batch, sweep
from capacity.metering.models import (
    InferenceRequest,
    InferenceUsageHour,
    QuarantinedRecord,
    UsageRecord,
)
from capacity.models import Node
from config.gateway_keys import receipt_public_key_b64, receipt_signing_key
from devtools.simulated_fleet import FleetProcess, register_fleet_nodes
from tests.billing.stripe_fakes import free_port
from tests.capacity.metering.receipt_builders import gateway_logged

pytestmark = pytest.mark.django_db
LINE, KEY = 501, 601
PROMPT = {"role": "user", "content": "say something short"}  # 3 words + 4 = 7 tokens


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    process = FleetProcess(
        nodes=2,
        port=free_port(),
        seed=77,
        gpus_per_node=2,
        window_seconds=60,
        backfill_windows=2,
        state_dir=tmp_path / "fleet",
        platform_key=receipt_public_key_b64(),
        engine_args=("--engine-ttft-ms=0", "--engine-tokens-per-second=0"),
    )
    with process:
        yield process


def _sweep(capture) -> batch.BatchResult:
    """One sweep of every due node, each batch polled and stored here (on commit, as the
    sweep enqueues it), over HTTP."""
    results = []

    def enqueue(node_ids: list[int]) -> None:
        results.append(batch.poll_and_store(node_ids, now=now, interval_seconds=60))

    now = timezone.now()
    with capture(execute=True):
        sweep.sweep(now=now, interval_seconds=60, enqueue=enqueue, batch_size=10)
    (result,) = results
    return result


def _receipt(node: Node, *, max_tokens: int) -> Receipt:
    return Receipt(
        v=1,
        rid=uuid.uuid4().hex,
        node=node.pk,
        agent=node.agent_public_key,
        line=LINE,
        key=KEY,
        product="llama",
        max_input_tokens=1_000,
        max_output_tokens=max_tokens,
        iat=int(timezone.now().timestamp()),
    )


def _infer(fleet: FleetProcess, index: int, receipt: Receipt, **body) -> httpx.Response:
    return httpx.post(
        f"{fleet.node_url(index)}/v1/inference/chat/completions",
        json={"model": "llama", "messages": [PROMPT], **body},
        headers={RECEIPT_HEADER: sign_receipt(receipt_signing_key(), receipt)},
        timeout=10,
    )


def test_a_poll_bills_each_receipted_request_exactly_once(
    fleet, partner_org, django_capture_on_commit_callbacks
):
    node_ids = register_fleet_nodes(organization=partner_org, fleet=fleet)
    nodes = [Node.objects.get(pk=node_id) for node_id in node_ids]
    served: dict[str, tuple[int, int, int]] = {}
    for index, node in enumerate(nodes):
        for max_tokens in (5, 9):
            receipt = _receipt(node, max_tokens=max_tokens)
            answer = _infer(fleet, index, receipt, max_tokens=max_tokens)
            assert answer.status_code == 200, answer.text
            usage = answer.json()["usage"]
            served[receipt.rid] = (node.pk, usage["prompt_tokens"], usage["completion_tokens"])
    # The gateway logged one request with fewer tokens (the buyer hung up after 2).
    cut = _receipt(nodes[0], max_tokens=8)
    gateway_logged(cut, input_tokens=7, output_tokens=2)
    assert _infer(fleet, 0, cut, max_tokens=8).status_code == 200
    # A replay of an answered receipt is refused by the agent: nothing is journaled.
    assert _infer(fleet, 0, cut, max_tokens=8).status_code == 409

    result = _sweep(django_capture_on_commit_callbacks)

    assert (result.failed, result.quarantined) == (0, 0)
    # The engine's usage: 7 prompt tokens, max_tokens completion tokens.
    assert sorted(usage for _, *usage in served.values()) == [[7, 5], [7, 5], [7, 9], [7, 9]]
    rows = {
        row.request_id.hex: (
            row.node_id,
            row.agent_input_tokens,
            row.agent_output_tokens,
            row.billed_input_tokens,
            row.billed_output_tokens,
        )
        for row in InferenceRequest.objects.all()
    }
    assert rows == {
        **{rid: (node_id, i, o, i, o) for rid, (node_id, i, o) in served.items()},
        cut.rid: (nodes[0].pk, 7, 8, 7, 2),
    }
    # Per line and node (the receipts' hour is now: the requests were just made).
    per_node: dict[tuple[int, int], list[int]] = {}
    for line_id, node_id, *sums in InferenceUsageHour.objects.values_list(
        "line_id", "node_id", "input_tokens", "output_tokens", "requests"
    ):
        totals = per_node.setdefault((line_id, node_id), [0, 0, 0])
        per_node[(line_id, node_id)] = [a + b for a, b in zip(totals, sums, strict=True)]
    assert per_node == {(LINE, nodes[0].pk): [21, 16, 3], (LINE, nodes[1].pk): [14, 14, 2]}
    assert UsageRecord.objects.filter(workload_kind="inference", requests=1, busy_ms=0).count() == 5

    # The next poll finds nothing new to bill.
    billed = sorted(InferenceUsageHour.objects.values_list("pk", "input_tokens", "output_tokens"))
    batch.poll_and_store(node_ids, now=timezone.now(), interval_seconds=60)
    assert (
        sorted(InferenceUsageHour.objects.values_list("pk", "input_tokens", "output_tokens"))
        == billed
    )
    assert not QuarantinedRecord.objects.exists()
