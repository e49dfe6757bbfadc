"""SIGKILL of a metering Celery worker while it stores receipt records (issue 14 point
5): the worker (its pool process and itself) dies in the middle of the statement that
writes a page of receipt records, request rows and hourly rollups; a new worker and
more sweeps then bring what is billed to exactly what the agents journaled, each
request once.

The worker is caught inside its store by a lock the test holds on the rollup table
(the statement waits on it); the kill comes while it waits, then the lock goes. The
orphaned statement then finishes and commits (PostgreSQL notices a dead client only
when it next speaks to it), or, when its connection is terminated too, rolls back:
either way the next sweeps must neither lose nor double.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.db.models import Sum
from django.utils import timezone

from capacity.agent.receipts import RECEIPT_HEADER, sign_receipt
from capacity.metering.models import (
    InferenceRequest,
    InferenceUsageHour,
    NodePollState,
    QuarantinedRecord,
    UsageRecord,
)
from capacity.models import Node
from config.gateway_keys import receipt_signing_key
from devtools.simulated_fleet import FleetProcess, fetch_truth, register_fleet_nodes
from tests.capacity.metering.celery_worker import (
    start_worker,
    stop_worker,
    sweep_all,
    worker_child,
)
from tests.capacity.metering.receipt_builders import receipt_for
from tests.db_locks import hold_share_lock, wait_for_lock_waiter
from tests.factories import OrganizationFactory
from tests.gateway.fleet_helpers import receipt_truth, running_fleet

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
NODES = 4
BATCH_SIZE = 2
LINE, KEY = 701, 801
MAX_TOKENS = (5, 9, 13)
PROMPT = {"role": "user", "content": "count the receipts"}  # 3 words + 4 = 7 tokens


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    with running_fleet(tmp_path, nodes=NODES, tokens_per_second=0) as process:
        yield process


def _serve(fleet: FleetProcess, index: int, node: Node, max_tokens: int) -> tuple[str, int, int]:
    """A chat completion on fleet node ``index`` with a receipt the platform signed (as
    the gateway sends it); its rid and the answer's usage."""
    receipt = receipt_for(
        node,
        rid=uuid.uuid4().hex,
        line_id=LINE,
        key_id=KEY,
        max_output_tokens=max_tokens,
        issued_at=timezone.now(),
    )
    answer = httpx.post(
        f"{fleet.node_url(index)}/v1/inference/chat/completions",
        json={"model": "llama", "messages": [PROMPT], "max_tokens": max_tokens},
        headers={RECEIPT_HEADER: sign_receipt(receipt_signing_key(), receipt)},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    return receipt.rid, usage["prompt_tokens"], usage["completion_tokens"]


def _converge(broker, fleet: FleetProcess, node_ids: list[int], rounds: int = 5) -> None:
    """Sweep until every node's cursor is its agent's head.

    A restarted worker may first run the killed worker's redelivered batch, which polls
    some nodes while a sweep makes them due, so each round waits for the cursors rather
    than for every node to be polled after the sweep started."""
    heads = fetch_truth(fleet, range(NODES)).head_seqs
    expected = [heads[i] for i in range(NODES)]
    for _ in range(rounds):
        sweep_all(broker, batch_size=BATCH_SIZE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            cursors = dict(NodePollState.objects.values_list("node_id", "last_seq"))
            # At or past the heads taken before: every receipt record is stored (the fleet
            # may have produced window records since).
            if all(cursors[n] >= head for n, head in zip(node_ids, expected, strict=True)):
                return
            time.sleep(0.2)
    raise AssertionError("the cursors never reached the agents' heads")


@pytest.mark.parametrize("orphan", ["finishes", "rolled_back"])
def test_a_worker_killed_while_storing_receipts_bills_each_exactly_once(
    broker, fleet, tmp_path, orphan
):
    partner = OrganizationFactory(is_buyer=False, is_partner=True)
    node_ids = register_fleet_nodes(organization=partner, fleet=fleet)
    nodes = [Node.objects.get(pk=node_id) for node_id in node_ids]
    served = {
        rid: (node.pk, input_tokens, output_tokens)
        for index, node in enumerate(nodes)
        for rid, input_tokens, output_tokens in (
            _serve(fleet, index, node, max_tokens) for max_tokens in MAX_TOKENS
        )
    }
    receipts = receipt_truth(fleet, range(NODES))
    assert receipts == {"records": 12, "input_tokens": 12 * 7, "output_tokens": 4 * (5 + 9 + 13)}

    worker = start_worker(tmp_path / "worker.log")
    try:
        child = worker_child(worker)
        lock = hold_share_lock("metering_inferenceusagehour")
        try:
            sweep_all(broker, batch_size=BATCH_SIZE)
            store = wait_for_lock_waiter(lock)  # the worker's store waits, mid-batch
            child.send_signal(signal.SIGKILL)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            if orphan == "rolled_back":
                lock.execute("SELECT pg_terminate_backend(%s)", [store])
        finally:
            lock.close()
    finally:
        stop_worker(worker)

    worker = start_worker(tmp_path / "worker.log")
    try:
        worker_child(worker)
        _converge(broker, fleet, node_ids)
    finally:
        stop_worker(worker)

    assert not QuarantinedRecord.objects.exists()
    rows = {
        row.request_id.hex: (row.node_id, row.billed_input_tokens, row.billed_output_tokens)
        for row in InferenceRequest.objects.all()
    }
    assert rows == served
    assert (
        UsageRecord.objects.filter(workload_kind="inference", requests=1, busy_ms=0).count()
        == receipts["records"]
    )
    billed = InferenceRequest.objects.aggregate(
        input_tokens=Sum("billed_input_tokens"), output_tokens=Sum("billed_output_tokens")
    )
    assert billed == {
        "input_tokens": receipts["input_tokens"],
        "output_tokens": receipts["output_tokens"],
    }
    rollup = InferenceUsageHour.objects.aggregate(
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        requests=Sum("requests"),
    )
    assert rollup == {**billed, "requests": receipts["records"]}
