"""Assignments end to end over real HTTP (docs/workloads.md "Cheap polling"): a buyer's
instance started with ``contracts.workloads.instance_start`` reaches a fleet node's
agent through metering's sweep, run here as a worker would run it.

The fleet counts every request its nodes receive (``GET /_admin/requests``), so the
tests assert what the sweep asked of whom: one signed ``PUT /v1/assignments`` per new
generation, the workloads list only embedded in the usage answers of polls whose digest
changed (never a ``GET /v1/workloads``), nothing more while nothing changes. The simulated runtime is quick (0.3 s pending, 0.2 s pulling, 0.2 s
starting, 0.2 s stopping) and windows last one second, so records name the assignment
within seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.utils import timezone

from capacity.agent.fleet import fleet_poll_token
from capacity.agent.protocol import parse_time
from capacity.metering import batch, sweep
from capacity.metering.attribution import attribute_new_records
from capacity.metering.models import NodePollState, QuarantinedRecord, UsageRecord
from capacity.models import Node, NodeStatus
from config.gateway_keys import receipt_public_key_b64
from contracts.models import Allocation, NodeAssignments, WorkloadState
from contracts.workloads import instance_start, workload_stop
from devtools.simulated_fleet import FleetProcess, register_fleet_nodes
from tests.billing.stripe_fakes import free_port
from tests.capacity.agent.assigning import digest
from tests.capacity.agent.verification import signed_json
from tests.contracts.usage_builders import active_contract, gpu_line
from tests.factories import OfferFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db]
SEED = 15
IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
BROKEN_IMAGE = "registry.example.com/broken:1"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuyer buyer@laptop"
# The runtime's whole start (pending, pulling, starting), with a margin.
START_S = 0.7 + 0.5


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    process = FleetProcess(
        nodes=2,
        port=free_port(),
        seed=SEED,
        gpus_per_node=2,
        window_seconds=1,
        backfill_windows=2,
        state_dir=tmp_path / "fleet",
        platform_key=receipt_public_key_b64(),
        engine_args=(
            "--pending-seconds=0.3",
            "--pull-seconds=0.2",
            "--start-seconds=0.2",
            "--stop-seconds=0.2",
            f"--fail-image={BROKEN_IMAGE}",
        ),
    )
    with process:
        yield process


@pytest.fixture
def nodes(fleet, partner_org) -> list[Node]:
    """The fleet's two nodes as enrollment leaves them, online."""
    node_ids = register_fleet_nodes(organization=partner_org, fleet=fleet)
    Node.objects.filter(pk__in=node_ids).update(status=NodeStatus.ONLINE)
    return [Node.objects.get(pk=node_id) for node_id in node_ids]


@pytest.fixture
def line(nodes, buyer_org):
    """An on-demand GPU line on an offer of the fleet's site (both nodes' GPUs)."""
    now = timezone.now()
    offer = OfferFactory(
        site=nodes[0].site,
        gpu_model=nodes[0].gpu_model,
        gpu_count=4,
        available_from=now - timedelta(days=1),
    )
    contract = active_contract(buyer=buyer_org, since=now - timedelta(days=1))
    return gpu_line(contract=contract, offer=offer, since=now - timedelta(days=1))


def poll(capture, *, now: datetime | None = None) -> datetime:
    """One sweep of every node (all made due), each batch polled and stored here (on
    commit, as the sweep enqueues it) over HTTP, at ``now`` (the clock by default)."""
    moment = now or timezone.now()

    def enqueue(node_ids: list[int]) -> None:
        batch.poll_and_store(node_ids, now=moment, interval_seconds=60)

    NodePollState.objects.update(next_poll_at=moment)
    with capture(execute=True):
        sweep.sweep(now=moment, interval_seconds=60, enqueue=enqueue)
    return moment


def asked(fleet: FleetProcess, index: int) -> dict[str, int]:
    """What node ``index`` was asked so far, by method and endpoint (health left out: a
    poll asks it one time in five, by the clock)."""
    nodes = fleet.requests([index])["nodes"]
    assert isinstance(nodes, dict)
    return {key: count for key, count in nodes[str(index)].items() if key != "GET health"}


def workloads_of(fleet: FleetProcess, node: Node, index: int) -> dict[str, Any]:
    """The node's ``GET /v1/workloads``, read by the test (counted like any request)."""
    response = httpx.get(
        f"{fleet.node_url(index)}/v1/workloads",
        headers={"Authorization": f"Bearer {fleet_poll_token(SEED, index)}"},
        timeout=10,
    )
    return dict(signed_json(response, node.agent_public_key))


def served_records(fleet: FleetProcess, node: Node, index: int, upto: int) -> list[dict]:
    """The node's journal up to seq ``upto``, as it serves it."""
    records: list[dict] = []
    while len(records) < upto:
        response = httpx.get(
            f"{fleet.node_url(index)}/v1/usage",
            params={"after": len(records), "limit": 1000},
            headers={"Authorization": f"Bearer {fleet_poll_token(SEED, index)}"},
            timeout=10,
        )
        records += signed_json(response, node.agent_public_key)["records"]
    return records[:upto]


def test_an_instance_is_pushed_once_runs_is_metered_to_its_line_and_stops(
    fleet, nodes, line, buyer_owner, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    node, idle = nodes
    workload = instance_start(
        line=line,
        gpu_count=2,
        image=IMAGE,
        ssh_public_key=SSH_KEY,
        ports=[22],
        env={},
        actor=buyer_owner,
    )
    assert (workload.node_id, workload.state) == (node.pk, WorkloadState.REQUESTED)

    # Poll 1: the agent holds generation 0, so the sweep pushes generation 1. The usage
    # answer (before the push) embedded the agent's list, as the platform held no digest
    # for the node yet: empty, so the workload waits for the next poll's report.
    poll(capture)
    workload.refresh_from_db()
    assert asked(fleet, 0) == {"GET usage": 1, "PUT assignments": 1}
    assert (workload.state, workload.connection) == (WorkloadState.REQUESTED, {})
    row = NodeAssignments.objects.get(node=node)
    assert (row.generation, row.agent_generation, row.attempts, row.next_attempt_at) == (
        1,
        1,
        0,
        None,
    )
    assert row.digest == digest([])

    # Poll 2, once it runs: no push (generation unchanged); the digest moved, so the usage
    # answer embeds the list (running), and nothing else is asked.
    time.sleep(START_S)
    poll(capture)
    workload.refresh_from_db()
    assert asked(fleet, 0) == {"GET usage": 2, "PUT assignments": 1}
    assert (workload.state, workload.connection) == (
        WorkloadState.RUNNING,
        {"host": "127.0.0.1", "ports": {"22": 40000}, "endpoint": ""},
    )

    # Polls 3 and 4, while records of it accrue: nothing pushed, nothing read.
    poll(capture)
    time.sleep(2.5)
    poll(capture)
    assert asked(fleet, 0) == {"GET usage": 4, "PUT assignments": 1}
    # A node that was never assigned anything is only polled (its digest is the empty one).
    assert asked(fleet, 1) == {"GET usage": 4}
    assert not NodeAssignments.objects.filter(node=idle).exists()

    (listed,) = workloads_of(fleet, node, 0)["workloads"]
    workload.refresh_from_db()
    assert (listed["id"], listed["state"]) == (workload.public_id, "running")
    assert workload.state_since == parse_time(listed["since"])

    # Stop: the next poll pushes generation 2 (it drops the assignment); the poll after
    # finds the agent's workloads embedded once more (stopping, then stopped).
    stopped_at = timezone.now()
    workload_stop(workload=workload, actor=buyer_owner, now=stopped_at)
    poll(capture)
    time.sleep(0.6)
    poll(capture)
    # The one read of the list is this test's, above: the sweep never asked for it.
    assert asked(fleet, 0) == {"GET usage": 6, "PUT assignments": 2, "GET workloads": 1}
    (listed,) = workloads_of(fleet, node, 0)["workloads"]
    assert (listed["id"], listed["state"]) == (workload.public_id, "stopped")
    workload.refresh_from_db()
    assert (workload.state, workload.ended_at) == (WorkloadState.STOPPED, stopped_at)
    row.refresh_from_db()
    assert (row.generation, row.agent_generation) == (2, 2)
    assert set(Allocation.objects.filter(workload=workload).values_list("period", flat=True)) == {
        DateTimeTZRange(workload.started_at, stopped_at, "[)")
    }

    # Usage: every record naming the assignment is stored and attributed to the
    # instance's line while the platform held the GPUs for it; its busy windows after
    # the stop (before the agent heard of it) are quarantined as unassigned, never billed.
    attribute_new_records()
    cursor = NodePollState.objects.get(node=node).last_seq
    naming = [
        record
        for record in served_records(fleet, node, 0, cursor)
        if record["workload"] == {"kind": "assignment", "ref": workload.public_id}
    ]
    held = [r for r in naming if parse_time(r["window_start"]) < stopped_at]
    after_stop = [r for r in naming if r not in held and r["busy_ms"] > 0]
    stored = UsageRecord.objects.filter(node=node, workload_ref=workload.public_id)
    assert len(held) >= 2 * 2  # two windows of both GPUs at least
    assert sorted(stored.values_list("seq", "line_id", "workload_id", "busy_ms")) == sorted(
        (r["seq"], line.pk, workload.pk, r["busy_ms"]) for r in held
    )
    assert sorted(
        QuarantinedRecord.objects.filter(node=node).values_list("seq", "reason")
    ) == sorted((r["seq"], "unassigned") for r in after_stop)
    assert not QuarantinedRecord.objects.filter(node=idle).exists()


def test_a_failing_image_fails_the_instance_and_ends_its_gpus_at_the_failure(
    fleet, nodes, line, buyer_owner, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    node = nodes[0]
    workload = instance_start(
        line=line,
        gpu_count=2,
        image=BROKEN_IMAGE,
        ssh_public_key="",
        ports=[22],
        env={},
        actor=buyer_owner,
    )

    poll(capture)
    time.sleep(START_S)
    poll(capture)

    (listed,) = workloads_of(fleet, node, 0)["workloads"]
    assert (listed["state"], listed["reason"]) == (
        "failed",
        f"pull failed: {BROKEN_IMAGE}: manifest unknown",
    )
    failed_at = max(parse_time(listed["since"]), workload.started_at)
    workload.refresh_from_db()
    assert (workload.state, workload.reason, workload.ended_at) == (
        WorkloadState.FAILED,
        f"pull failed: {BROKEN_IMAGE}: manifest unknown",
        failed_at,
    )
    # Billed up to the failure: not a second when it failed within the second it started
    # (the agent says when to the second; the allocation starting there is deleted).
    held = {DateTimeTZRange(workload.started_at, failed_at, "[)")}
    assert set(Allocation.objects.filter(workload=workload).values_list("period", flat=True)) == (
        held if failed_at > workload.started_at else set()
    )
    # The failure raised the generation (the agent is told to drop it): pushed next poll.
    row = NodeAssignments.objects.get(node=node)
    assert (row.generation, row.agent_generation) == (2, 1)
    poll(capture)
    row.refresh_from_db()
    assert (row.generation, row.agent_generation) == (2, 2)
    assert asked(fleet, 0)["PUT assignments"] == 2


def test_a_push_the_node_does_not_answer_is_retried_after_30_s_then_60_s(
    fleet, nodes, line, buyer_owner, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    node = nodes[0]
    workload = instance_start(
        line=line,
        gpu_count=2,
        image=IMAGE,
        ssh_public_key="",
        ports=[22],
        env={},
        actor=buyer_owner,
    )
    # The agent answers its polls but not the push: first it hangs past the client's
    # read timeout, then it answers 503.
    fleet.inject("timeout", [0], endpoint="assignments", delay_ms=8_000)
    fleet.inject("http_5xx", [0], endpoint="assignments", status=503)

    first = poll(capture)
    row = NodeAssignments.objects.get(node=node)
    assert (row.attempts, row.next_attempt_at, row.agent_generation) == (
        1,
        first + timedelta(seconds=30),
        0,
    )
    assert row.last_error == "timed out (ReadTimeout)"
    # Held back until then: a poll 29 s later does not push.
    poll(capture, now=first + timedelta(seconds=29))
    assert asked(fleet, 0)["PUT assignments"] == 1

    second = poll(capture, now=first + timedelta(seconds=30))
    row.refresh_from_db()
    assert (row.attempts, row.next_attempt_at, row.agent_generation) == (
        2,
        second + timedelta(seconds=60),
        0,
    )
    assert row.last_error.startswith("the agent refused the assignments: ")
    assert "503" in row.last_error
    poll(capture, now=second + timedelta(seconds=59))
    assert asked(fleet, 0)["PUT assignments"] == 2
    workload.refresh_from_db()
    assert workload.state == WorkloadState.REQUESTED  # "Waiting for the node"

    poll(capture, now=second + timedelta(seconds=60))
    row.refresh_from_db()
    assert (row.attempts, row.next_attempt_at, row.agent_generation, row.last_error) == (
        0,
        None,
        1,
        "",
    )
    assert asked(fleet, 0)["PUT assignments"] == 3
