"""Assignments and workloads (agent protocol v1.1, docs/workloads.md) against a real agent
process over real HTTP: bodies are built and signed here with ``json`` and
``cryptography``, and every answer's signature is checked independently."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent.assignments import assignments_body, sign_assignments
from capacity.agent.simulator import simulated_gpus, window_activity
from tests.capacity.agent.assigning import (
    body,
    container,
    digest,
    put,
    records_until,
    signature,
    watch_states,
    workloads,
)
from tests.capacity.agent.conftest import Launcher
from tests.capacity.agent.receipting import raw_public_b64
from tests.capacity.agent.verification import fetch_all_records, signed_json

PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(40, 72)))
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(80, 112)))
TOKEN = "assign-token"
SEED = 3
NODE_KEY = "assign-node"
BROKEN_IMAGE = "registry.example.com/broken:1"
JOB = "a" * 32
NOTEBOOK = "b" * 32


def _flags() -> list[str]:
    return [
        *("--simulate", "--gpus", "2", "--seed", str(SEED), "--node-id", NODE_KEY),
        *("--window-seconds", "1", "--poll-token", TOKEN),
        *("--platform-key", raw_public_b64(PLATFORM)),
        *("--pending-seconds", "0.3", "--pull-seconds", "0.3", "--start-seconds", "0.3"),
        *("--stop-seconds", "0.3", "--stopped-retention-seconds", "0.6"),
        *("--fail-image", BROKEN_IMAGE),
    ]


class Agent:
    def __init__(self, launcher: Launcher, journal: Path) -> None:
        self.launcher = launcher
        self.journal = journal
        self.process = launcher.agent(journal, *_flags())
        self.client = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        info = self.client.get(f"{self.url}/v1/info").json()
        self.public_key: str = info["public_key"]
        self.gpus: list[str] = [gpu["uuid"] for gpu in info["gpus"]]

    @property
    def url(self) -> str:
        return self.process.url

    def restart(self) -> None:
        self.process.kill()
        self.process = self.launcher.agent(self.journal, *_flags(), port=self.process.port)

    def put(self, payload: bytes, key: Ed25519PrivateKey | None = PLATFORM) -> httpx.Response:
        return put(self.client, self.url, payload, key=key, token=TOKEN)

    def body(self, generation: int, assignments: list[dict[str, Any]]) -> bytes:
        return body(agent=self.public_key, generation=generation, assignments=assignments)

    def workloads(self) -> dict[str, Any]:
        return workloads(self.client, self.url, self.public_key)

    def records(self) -> list[dict[str, Any]]:
        records, _ = fetch_all_records(self.client, self.url, self.public_key)
        return records

    def answer(self, response: httpx.Response) -> Any:
        return signed_json(response, self.public_key)


@pytest.fixture
def agent(launcher: Launcher, tmp_path: Path) -> Iterator[Agent]:
    running = Agent(launcher, tmp_path / "agent.sqlite3")
    yield running
    running.client.close()


def test_the_platform_helper_builds_the_documented_canonical_body() -> None:
    assignments = [container(JOB, ["GPU-1"])]
    built = assignments_body(12, "QUdFTlQ=", 7, "2026-12-04T10:00:00Z", assignments)
    expected = body(agent="QUdFTlQ=", generation=7, assignments=assignments)
    signed, sent_signature = sign_assignments(PLATFORM, built)

    assert built == expected
    assert json.loads(built)["v"] == 1
    assert (signed, sent_signature) == (expected, signature(PLATFORM, expected))


def test_unsigned_wrongly_signed_and_unauthenticated_bodies_change_nothing(agent: Agent) -> None:
    payload = agent.body(1, [container(JOB, agent.gpus[:1])])
    tampered = payload.replace(b'"generation":1', b'"generation":2')

    unsigned = agent.put(payload, key=None)
    forged = agent.put(payload, key=STRANGER)
    altered = agent.client.put(
        f"{agent.url}/v1/assignments",
        content=tampered,
        headers={"X-Platform-Signature": signature(PLATFORM, payload)},
    )
    garbage = agent.client.put(
        f"{agent.url}/v1/assignments",
        content=payload,
        headers={"X-Platform-Signature": "not base64!"},
    )
    anonymous = httpx.put(
        f"{agent.url}/v1/assignments",
        content=payload,
        headers={"X-Platform-Signature": signature(PLATFORM, payload)},
    )

    for refused in (unsigned, forged, altered, garbage):
        assert refused.status_code == 403
        assert agent.answer(refused) == {"error": "bad_platform_signature"}
    assert anonymous.status_code == 401
    assert agent.answer(anonymous) == {"error": "unauthorized"}
    assert agent.workloads() == {"generation": 0, "workloads": []}
    assert not Path(f"{agent.journal}.assignments.json").exists()


def test_bodies_for_another_agent_or_of_the_wrong_shape_are_refused(agent: Agent) -> None:
    gpu0, gpu1 = agent.gpus
    cases = {
        "unknown GPU": agent.body(1, [container(JOB, ["GPU-not-on-this-node"])]),
        "GPU in two": agent.body(1, [container(JOB, [gpu0]), container(NOTEBOOK, [gpu0, gpu1])]),
        "other agent": body(agent=raw_public_b64(STRANGER), generation=1, assignments=[]),
        "not JSON": b"{generation: 1",
        "bad id": agent.body(1, [container("XYZ", [gpu0])]),
        "generation 0": agent.body(0, []),
        "extra key": agent.body(1, [{**container(JOB, [gpu0]), "privileged": True}]),
    }
    for name, payload in cases.items():
        response = agent.put(payload)
        assert response.status_code == 400, name
        assert agent.answer(response)["error"] == "invalid_assignments", name
    assert agent.workloads() == {"generation": 0, "workloads": []}


def test_generations_only_go_up_and_a_repeat_is_a_no_op(agent: Agent) -> None:
    first = agent.body(2, [container(JOB, agent.gpus[:1])])
    other = agent.body(2, [container(NOTEBOOK, agent.gpus[:1])])

    accepted = agent.put(first)
    repeated = agent.put(first)
    same_generation_other_body = agent.put(other)
    older = agent.put(agent.body(1, []))

    assert (accepted.status_code, agent.answer(accepted)) == (
        200,
        {"generation": 2, "accepted": True},
    )
    assert (repeated.status_code, agent.answer(repeated)) == (
        200,
        {"generation": 2, "accepted": True},
    )
    for stale in (same_generation_other_body, older):
        assert stale.status_code == 409
        assert agent.answer(stale) == {"error": "stale_generation", "generation": 2}
    held = agent.workloads()
    assert held["generation"] == 2
    assert [w["id"] for w in held["workloads"]] == [JOB]
    saved = json.loads(Path(f"{agent.journal}.assignments.json").read_text())
    assert saved == {"body": first.decode(), "signature": signature(PLATFORM, first)}


def test_a_workload_goes_pending_pulling_starting_running_with_its_connection(
    agent: Agent,
) -> None:
    agent.put(agent.body(1, [container(JOB, agent.gpus[:1])]))

    seen, running = watch_states(agent.client, agent.url, agent.public_key, JOB, until={"running"})

    assert seen == ["pending", "pulling", "starting", "running"]
    assert running is not None
    assert running["connection"] == {
        "host": "127.0.0.1",
        "ports": {"22": 40000, "8888": 40001},
        "endpoint": "",
    }
    assert (running["gpus"], running["reason"], running["fault"]) == (agent.gpus[:1], "", "")
    assert running["since"].endswith("Z")


def test_a_failing_image_fails_with_its_reason_and_stays_listed(agent: Agent) -> None:
    agent.put(agent.body(1, [container(JOB, agent.gpus[:1], image=BROKEN_IMAGE)]))

    seen, failed = watch_states(agent.client, agent.url, agent.public_key, JOB, until={"failed"})

    assert seen == ["pending", "pulling", "failed"]
    assert failed is not None
    assert failed["reason"] == f"pull failed: {BROKEN_IMAGE}: manifest unknown"
    # The buyer's image does not exist: the buyer's fault, not the node's.
    assert failed["fault"] == "buyer"
    assert failed["connection"] == {"host": "", "ports": {}, "endpoint": ""}
    time.sleep(1.0)
    assert [w["state"] for w in agent.workloads()["workloads"]] == ["failed"]


def test_a_removed_assignment_stops_then_its_id_is_gone(agent: Agent) -> None:
    agent.put(agent.body(1, [container(JOB, agent.gpus[:1]), container(NOTEBOOK, agent.gpus[1:])]))
    watch_states(agent.client, agent.url, agent.public_key, JOB, until={"running"})

    agent.put(agent.body(2, [container(NOTEBOOK, agent.gpus[1:])]))
    seen, _ = watch_states(agent.client, agent.url, agent.public_key, JOB, until={None})

    assert seen == ["stopping", "stopped", None]
    listed = agent.workloads()
    assert listed["generation"] == 2
    assert [(w["id"], w["state"]) for w in listed["workloads"]] == [(NOTEBOOK, "running")]


def test_usage_answers_carry_the_generation_and_the_workloads_digest(agent: Agent) -> None:
    empty = agent.answer(agent.client.get(f"{agent.url}/v1/usage"))
    assert empty["assignments"] == {"generation": 0, "digest": digest([])}

    agent.put(agent.body(3, [container(JOB, agent.gpus[:1])]))
    watch_states(agent.client, agent.url, agent.public_key, JOB, until={"running"})
    listed = agent.workloads()
    page = agent.answer(agent.client.get(f"{agent.url}/v1/usage", params={"limit": 1}))

    assert page["assignments"] == {"generation": 3, "digest": digest(listed["workloads"])}


def test_usage_answers_embed_the_workloads_when_the_platform_holds_another_digest(
    agent: Agent,
) -> None:
    agent.put(agent.body(3, [container(JOB, agent.gpus[:1])]))
    watch_states(agent.client, agent.url, agent.public_key, JOB, until={"running"})
    listed = agent.workloads()
    held = digest(listed["workloads"])

    def member(platform_digest: str) -> dict[str, Any]:
        response = agent.client.get(
            f"{agent.url}/v1/usage", params={"limit": 1, "workloads": platform_digest}
        )
        # The signature covers the whole body, the embedded list included.
        return dict(agent.answer(response)["assignments"])

    same, other, none = member(held), member(digest([])), member("")

    assert same == {"generation": 3, "digest": held}
    assert other == {"generation": 3, "digest": held, "workloads": listed["workloads"]}
    assert none == other


def _ordinal(record: dict[str, Any]) -> int:
    return (int(record["seq"]) - 1) // 2


def test_usage_records_name_the_running_assignment_and_idle_gpus_stay_idle(
    agent: Agent,
) -> None:
    # A window journaled before the assignment, so there is time before it to check.
    records_until(agent.records, lambda rs: len(rs) >= len(agent.gpus))
    agent.put(agent.body(1, [container(JOB, agent.gpus[:1])]))
    _, running = watch_states(agent.client, agent.url, agent.public_key, JOB, until={"running"})
    assert running is not None
    # Windows that start a second after the running second are covered end to end.
    since = datetime.strptime(running["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    first_full_start = (since + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    records = records_until(
        agent.records, lambda rs: sum(r["window_start"] >= first_full_start for r in rs) >= 4
    )

    gpus = simulated_gpus(seed=SEED, node_key=NODE_KEY, count=2, model="h100")
    full = [r for r in records if r["window_start"] >= first_full_start]
    before = [r for r in records if r["window_start"] < running["since"]]
    assert len(full) >= 4
    for record in full:
        gpu = gpus[agent.gpus.index(record["gpu_uuid"])]
        if gpu.index == 0:
            expected = window_activity(
                seed=SEED,
                node_key=NODE_KEY,
                gpu=gpu,
                ordinal=_ordinal(record),
                window_ms=1000,
                assigned=(JOB, 1000),
            )
            assert record["workload"] == {"kind": "assignment", "ref": JOB}
            assert record["busy_ms"] == expected.busy_ms > 0
        else:
            assert record["workload"] == {"kind": "idle", "ref": None}
            assert record["busy_ms"] == 0
            assert record["energy_mj"] == 70 * 1000  # the H100's idle power, 1 s
    assert before and all(r["workload"] == {"kind": "idle", "ref": None} for r in before)
    assert all(r["busy_ms"] == 0 for r in before)


def test_unassigned_busy_fault_reports_busy_time_as_idle(agent: Agent) -> None:
    response = httpx.post(
        f"{agent.url}/_admin/faults", json={"fault": "unassigned_busy", "count": 3}
    )
    assert response.status_code == 200
    head = len(agent.records())

    records = records_until(agent.records, lambda rs: len(rs) >= head + 2 * 5)

    busy = [r for r in records if r["busy_ms"] > 0]
    assert len(busy) == 3 * 2  # three windows, both GPUs
    assert len({r["window_start"] for r in busy}) == 3
    gpus = simulated_gpus(seed=SEED, node_key=NODE_KEY, count=2, model="h100")
    for record in busy:
        expected = window_activity(
            seed=SEED,
            node_key=NODE_KEY,
            gpu=gpus[agent.gpus.index(record["gpu_uuid"])],
            ordinal=_ordinal(record),
            window_ms=1000,
            unassigned_busy=True,
        )
        assert record["workload"] == {"kind": "idle", "ref": None}
        assert record["busy_ms"] == expected.busy_ms
        assert record["energy_mj"] == expected.energy_mj > 70 * 1000


def test_a_restarted_agent_reloads_its_assignments_and_converges(agent: Agent) -> None:
    payload = agent.body(4, [container(JOB, agent.gpus[:1]), container(NOTEBOOK, agent.gpus[1:])])
    agent.put(payload)
    _, before = watch_states(agent.client, agent.url, agent.public_key, NOTEBOOK, until={"running"})

    agent.restart()  # SIGKILL: nothing but what was on disk before the answer survives
    seen, after = watch_states(
        agent.client, agent.url, agent.public_key, NOTEBOOK, until={"running"}
    )

    assert before is not None and after is not None
    # Started again from the saved set: at least pending + pull + start (0.9 s) later.
    assert after["since"] > before["since"]
    assert seen[-1] == "running"
    listed = agent.workloads()
    assert listed["generation"] == 4
    assert [(w["id"], w["state"]) for w in listed["workloads"]] == [
        (JOB, "running"),
        (NOTEBOOK, "running"),
    ]
    stale = agent.put(agent.body(3, []))
    assert (stale.status_code, agent.answer(stale)) == (
        409,
        {"error": "stale_generation", "generation": 4},
    )
    repeated = agent.put(payload)
    assert (repeated.status_code, agent.answer(repeated)) == (
        200,
        {"generation": 4, "accepted": True},
    )
