"""The poll's side of "Cheap polling" (docs/workloads.md) against an in-process agent:
the first usage request carries the digest the platform holds (``workloads=``); an
answer whose digest differs embeds the list, which is taken only from a verified body;
an agent that does not embed it (before the parameter) is read with ``GET
/v1/workloads`` as before."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent.protocol import canonical_json, public_key_b64
from capacity.agent_client import AgentHttp
from capacity.metering.assignments import EMPTY_WORKLOADS_DIGEST, NodeAssignmentPlan
from capacity.metering.polling import PollOutcome, PollTarget, poll_node
from tests.capacity.metering.conftest import POLL_TOKEN, FakeAgent, make_fields

NOW = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)
LISTED = [
    {
        "id": "a" * 32,
        "state": "running",
        "since": "2026-01-05T10:59:00Z",
        "reason": "",
        "fault": "",
        "gpus": ["GPU-00000000-0000-0000-0000-000000000001"],
        "connection": {"host": "203.0.113.7", "ports": {"22": 40000}, "endpoint": ""},
    }
]
LISTED_DIGEST = hashlib.sha256(canonical_json(LISTED).encode()).hexdigest()


def poll(agent: FakeAgent, *, digest: str, last_seq: int = 0) -> PollOutcome:
    target = PollTarget(
        node_id=1,
        agent_url="http://agent.example",
        token=POLL_TOKEN,
        public_key=public_key_b64(agent.key.public_key()),
        journal_epoch=agent.epoch,
        last_seq=last_seq,
        last_hash=str(agent.records[last_seq - 1]["hash"]) if last_seq else "0" * 64,
        gpu_window_ends={},
        gpus={},
        check_health=False,
        assignments=NodeAssignmentPlan(digest=digest),
    )

    async def run() -> PollOutcome:
        async with AgentHttp(max_connections=1, transport=agent.transport()) as http:
            return await poll_node(http, target, polled_at=NOW)

    return asyncio.run(run())


def asked(agent: FakeAgent) -> list[str]:
    return [url.removeprefix("http://agent.example/v1/") for url in agent.requests_seen]


def test_the_same_digest_costs_one_usage_request_and_reads_nothing(agent_key) -> None:
    agent = FakeAgent(key=agent_key, workloads=LISTED)

    outcome = poll(agent, digest=LISTED_DIGEST)

    assert asked(agent) == [f"usage?after=0&limit=1000&workloads={LISTED_DIGEST}"]
    report = outcome.assignment_report
    assert report is not None
    assert (report.agent_generation, report.agent_digest, report.workloads) == (
        1,
        LISTED_DIGEST,
        None,
    )


def test_another_digest_gets_the_list_embedded_in_the_usage_answer(agent_key) -> None:
    agent = FakeAgent(key=agent_key, workloads=LISTED)

    outcome = poll(agent, digest=EMPTY_WORKLOADS_DIGEST)

    assert asked(agent) == [f"usage?after=0&limit=1000&workloads={EMPTY_WORKLOADS_DIGEST}"]
    report = outcome.assignment_report
    assert report is not None
    assert (report.agent_generation, report.agent_digest, report.workloads) == (
        1,
        LISTED_DIGEST,
        LISTED,
    )


def test_no_digest_held_gets_the_list_and_later_pages_do_not_ask_again(agent_key) -> None:
    agent = FakeAgent(key=agent_key, workloads=LISTED)
    agent.append(*(make_fields(gpu=0, minute=minute) for minute in range(1500)))

    outcome = poll(agent, digest="")

    assert asked(agent) == ["usage?after=0&limit=1000&workloads=", "usage?after=1000&limit=1000"]
    report = outcome.assignment_report
    assert report is not None
    assert (report.agent_digest, report.workloads) == (LISTED_DIGEST, LISTED)
    assert [len(page.accepted) + len(page.quarantined) for page in outcome.pages] == [1000, 500]


def test_a_list_in_a_body_the_agent_did_not_sign_is_not_taken(agent_key) -> None:
    stranger = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
    agent = FakeAgent(key=agent_key, workloads=LISTED, sign_with=stranger)

    outcome = poll(agent, digest=EMPTY_WORKLOADS_DIGEST)

    assert asked(agent) == [f"usage?after=0&limit=1000&workloads={EMPTY_WORKLOADS_DIGEST}"]
    assert (
        outcome.integrity_problem == "usage page: signature does not verify with the enrolled key"
    )
    report = outcome.assignment_report
    assert report is not None
    assert (report.agent_generation, report.agent_digest, report.workloads) == (None, None, None)


def test_an_agent_that_does_not_embed_the_list_is_read_with_get_workloads(agent_key) -> None:
    agent = FakeAgent(key=agent_key, workloads=LISTED, embeds_workloads=False)

    outcome = poll(agent, digest=EMPTY_WORKLOADS_DIGEST)

    assert asked(agent) == [
        f"usage?after=0&limit=1000&workloads={EMPTY_WORKLOADS_DIGEST}",
        "workloads",
    ]
    report = outcome.assignment_report
    assert report is not None
    assert (report.agent_digest, report.workloads) == (LISTED_DIGEST, LISTED)
