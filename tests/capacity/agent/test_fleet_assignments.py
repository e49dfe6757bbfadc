"""Assignments on fleet nodes (protocol v1.1), over real HTTP: each node speaks the agent's
assignment rules from its own simulated runtime, its records name the assignment that
ran, and a fleet resumed from ``--state-dir`` serves the very same journal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent.fleet import fleet_node_id, fleet_poll_token
from capacity.agent.simulator import simulated_gpus, window_activity
from tests.capacity.agent.assigning import (
    body,
    container,
    digest,
    put,
    records_until,
    watch_states,
    workloads,
)
from tests.capacity.agent.conftest import Launcher, Process
from tests.capacity.agent.receipting import raw_public_b64
from tests.capacity.agent.verification import check_chain, fetch_all_records, signed_json

SEED = 9
NODES = 8
GPUS = 2
PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
BROKEN_IMAGE = "registry.example.com/broken:1"
JOB = "d" * 32
OTHER = "e" * 32


def _flags(*extra: str) -> list[str]:
    return [
        *("--nodes", str(NODES), "--seed", str(SEED), "--gpus-per-node", str(GPUS)),
        *("--window-seconds", "1", "--backfill-windows", "5"),
        *("--platform-key", raw_public_b64(PLATFORM)),
        *("--pending-seconds", "0.2", "--pull-seconds", "0.2", "--start-seconds", "0.2"),
        *("--stop-seconds", "0.2", "--stopped-retention-seconds", "0.4"),
        *("--fail-image", BROKEN_IMAGE),
        *extra,
    ]


class Node:
    def __init__(self, fleet: Process, index: int) -> None:
        self.index = index
        self.url = f"{fleet.url}/n/{index}"
        token = fleet_poll_token(SEED, index)
        self.token = token
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10)
        info = self.client.get(f"{self.url}/v1/info").json()
        self.public_key: str = info["public_key"]
        self.gpus: list[str] = [gpu["uuid"] for gpu in info["gpus"]]

    def assign(self, generation: int, assignments: list[dict[str, Any]]) -> httpx.Response:
        payload = body(agent=self.public_key, generation=generation, assignments=assignments)
        return put(self.client, self.url, payload, key=PLATFORM, token=self.token)

    def workloads(self) -> dict[str, Any]:
        return workloads(self.client, self.url, self.public_key)

    def watch(self, assignment_id: str, until: set[str | None]) -> tuple[list[Any], Any]:
        return watch_states(self.client, self.url, self.public_key, assignment_id, until=until)

    def records(self) -> list[dict[str, Any]]:
        records, _ = fetch_all_records(self.client, self.url, self.public_key)
        return records


@pytest.fixture(scope="module")
def fleet(module_launcher: Launcher) -> Process:
    return module_launcher.fleet(*_flags())


def _after(since: str, seconds: int) -> str:
    moment = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (moment + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expected(index: int, record: dict[str, Any], **extra: Any) -> Any:
    gpus = simulated_gpus(seed=SEED, node_key=fleet_node_id(SEED, index), count=GPUS, model="h100")
    gpu = next(g for g in gpus if g.uuid == record["gpu_uuid"])
    return window_activity(
        seed=SEED,
        node_key=fleet_node_id(SEED, index),
        gpu=gpu,
        ordinal=(record["seq"] - 1) // GPUS,
        window_ms=1000,
        **extra,
    )


def test_a_node_runs_what_it_was_assigned_and_its_records_name_it(fleet: Process) -> None:
    node, bystander = Node(fleet, 1), Node(fleet, 2)

    accepted = node.assign(1, [container(JOB, node.gpus[:1])])
    seen, running = node.watch(JOB, {"running"})
    first_covered = _after(running["since"], 1)
    records = records_until(
        node.records, lambda rs: sum(r["window_start"] >= first_covered for r in rs) >= 2 * GPUS
    )
    page = signed_json(
        node.client.get(f"{node.url}/v1/usage", params={"limit": 1}), node.public_key
    )

    assert (accepted.status_code, signed_json(accepted, node.public_key)) == (
        200,
        {"generation": 1, "accepted": True},
    )
    assert seen == ["pending", "pulling", "starting", "running"]
    assert running["connection"] == {
        "host": "127.0.0.1",
        "ports": {"22": 40000, "8888": 40001},
        "endpoint": "",
    }
    assert page["assignments"] == {"generation": 1, "digest": digest(node.workloads()["workloads"])}
    check_chain(records, prev_hash="0" * 64, first_seq=1)
    covered = [r for r in records if r["window_start"] >= first_covered]
    assert len(covered) >= 2 * GPUS
    for record in covered:
        if record["gpu_uuid"] == node.gpus[0]:
            assert record["workload"] == {"kind": "assignment", "ref": JOB}
            assert record["busy_ms"] == _expected(1, record, assigned=(JOB, 1000)).busy_ms > 0
        else:
            assert (record["workload"], record["busy_ms"]) == ({"kind": "idle", "ref": None}, 0)
    earlier = [r for r in records if r["window_end"] <= running["since"]]
    assert earlier and {r["busy_ms"] for r in earlier} == {0}
    # A node that was never assigned anything answers as such, with the empty digest.
    assert bystander.workloads() == {"generation": 0, "workloads": []}
    idle_page = signed_json(
        bystander.client.get(f"{bystander.url}/v1/usage", params={"limit": 1}),
        bystander.public_key,
    )
    assert idle_page["assignments"] == {"generation": 0, "digest": digest([])}


def test_fleet_usage_answers_embed_the_workloads_when_the_platform_holds_another_digest(
    fleet: Process,
) -> None:
    node, bystander = Node(fleet, 6), Node(fleet, 7)
    node.assign(1, [container(JOB, node.gpus[:1])])
    node.watch(JOB, {"running"})
    listed = node.workloads()
    held = digest(listed["workloads"])

    def member(of: Node, platform_digest: str) -> dict[str, Any]:
        response = of.client.get(
            f"{of.url}/v1/usage", params={"limit": 1, "workloads": platform_digest}
        )
        # The signature covers the whole body, the embedded list included.
        return dict(signed_json(response, of.public_key)["assignments"])

    assert member(node, held) == {"generation": 1, "digest": held}
    assert member(node, digest([])) == {
        "generation": 1,
        "digest": held,
        "workloads": listed["workloads"],
    }
    # A node never assigned anything: the empty list, embedded only for another digest.
    assert member(bystander, digest([])) == {"generation": 0, "digest": digest([])}
    assert member(bystander, "") == {"generation": 0, "digest": digest([]), "workloads": []}


def test_fleet_nodes_refuse_forged_and_stale_assignments(fleet: Process) -> None:
    node = Node(fleet, 3)
    payload = body(agent=node.public_key, generation=5, assignments=[])
    stranger = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))

    unsigned = put(node.client, node.url, payload, key=None, token=node.token)
    forged = put(node.client, node.url, payload, key=stranger, token=node.token)
    for_node_4 = put(
        node.client,
        node.url,
        body(agent=Node(fleet, 4).public_key, generation=5, assignments=[]),
        key=PLATFORM,
        token=node.token,
    )
    accepted = node.assign(5, [])
    stale = node.assign(4, [container(JOB, node.gpus[:1])])

    assert [r.status_code for r in (unsigned, forged, for_node_4, accepted, stale)] == [
        403,
        403,
        400,
        200,
        409,
    ]
    assert signed_json(forged, node.public_key) == {"error": "bad_platform_signature"}
    assert signed_json(stale, node.public_key) == {"error": "stale_generation", "generation": 5}
    assert node.workloads() == {"generation": 5, "workloads": []}


def test_a_failing_image_fails_and_a_removed_assignment_stops_then_goes(fleet: Process) -> None:
    node = Node(fleet, 4)
    node.assign(
        1, [container(JOB, node.gpus[:1]), container(OTHER, node.gpus[1:], image=BROKEN_IMAGE)]
    )

    failing, failed = node.watch(OTHER, {"failed"})
    node.watch(JOB, {"running"})
    node.assign(2, [container(OTHER, node.gpus[1:], image=BROKEN_IMAGE)])
    stopping, _ = node.watch(JOB, {None})

    assert failing == ["pending", "pulling", "failed"]
    assert (failed["reason"], failed["fault"]) == (
        f"pull failed: {BROKEN_IMAGE}: manifest unknown",
        "buyer",
    )
    assert stopping == ["stopping", "stopped", None]
    assert [(w["id"], w["state"]) for w in node.workloads()["workloads"]] == [(OTHER, "failed")]


def test_unassigned_busy_fault_reports_busy_time_as_idle(fleet: Process) -> None:
    node = Node(fleet, 5)
    response = httpx.post(
        f"{fleet.url}/_admin/faults", json={"nodes": [5], "fault": "unassigned_busy", "count": 2}
    )
    assert response.status_code == 200
    head = len(node.records())

    records = records_until(node.records, lambda rs: len(rs) >= head + 4 * GPUS)
    busy = [r for r in records if r["busy_ms"] > 0]

    assert len(busy) == 2 * GPUS
    for record in busy:
        expected = _expected(5, record, unassigned_busy=True)
        assert record["workload"] == {"kind": "idle", "ref": None}
        assert (record["busy_ms"], record["energy_mj"]) == (expected.busy_ms, expected.energy_mj)


def test_a_resumed_fleet_serves_the_same_journal_and_workloads(
    launcher: Launcher, tmp_path: Path
) -> None:
    state = tmp_path / "fleet-state"
    first = launcher.fleet(*_flags("--state-dir", str(state)))
    node = Node(first, 0)
    node.assign(3, [container(JOB, node.gpus)])
    _, running = node.watch(JOB, {"running"})
    before = records_until(
        node.records, lambda rs: sum(r["workload"]["ref"] == JOB for r in rs) >= 2 * GPUS
    )
    first.kill()

    resumed = launcher.fleet(*_flags("--state-dir", str(state)))
    again = Node(resumed, 0)
    after = again.records()

    assert sum(r["workload"]["kind"] == "assignment" for r in before) >= 2 * GPUS
    assert after[: len(before)] == before
    listed = again.workloads()
    assert listed["generation"] == 3
    assert [(w["id"], w["state"], w["since"]) for w in listed["workloads"]] == [
        (JOB, "running", running["since"])
    ]
    assert again.assign(3, [container(JOB, node.gpus)]).status_code == 200
    assert again.assign(2, []).status_code == 409
