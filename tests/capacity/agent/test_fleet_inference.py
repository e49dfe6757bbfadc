"""Receipted inference on fleet nodes (protocol v1.1), over real HTTP.

A fleet node's journal is computed from the seed; receipt records are the state it
keeps. These tests check, from the outside, that receipt records land at the head in
order, the computed window records go on after them unchanged, pages stay stable, and a
resumed fleet serves the very same journal and refuses replays.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent.fleet import fleet_node_id, fleet_poll_token
from capacity.agent.simulator import simulated_gpus, window_activity
from tests.capacity.agent.conftest import Launcher, Process
from tests.capacity.agent.receipting import (
    CHAT_PROMPT_TOKENS,
    RECEIPT_HEADER,
    chat_body,
    make_receipt,
    raw_public_b64,
    receipt_records,
    sse_events,
)
from tests.capacity.agent.verification import (
    GENESIS,
    check_chain,
    fetch_all_records,
    signed_json,
)

SEED = 5
NODES = 4
GPUS = 2
BACKFILL = 600  # one-second windows: 1200 window records per node, past a checkpoint
PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
CHAT = "v1/inference/chat/completions"


def _fleet_flags(*extra: str) -> list[str]:
    return [
        *("--nodes", str(NODES), "--seed", str(SEED), "--gpus-per-node", str(GPUS)),
        *("--window-seconds", "1", "--backfill-windows", str(BACKFILL)),
        *("--platform-key", raw_public_b64(PLATFORM)),
        *("--engine-ttft-ms", "0", "--engine-tokens-per-second", "0"),
        *extra,
    ]


@pytest.fixture(scope="module")
def fleet(module_launcher: Launcher) -> Process:
    return module_launcher.fleet(*_fleet_flags())


def _client(index: int) -> httpx.Client:
    return httpx.Client(
        headers={"Authorization": f"Bearer {fleet_poll_token(SEED, index)}"}, timeout=10
    )


def _public_key(fleet: Process, index: int) -> str:
    return str(_client(index).get(f"{fleet.url}/n/{index}/v1/info").json()["public_key"])


def _records(fleet: Process, index: int) -> list[dict[str, Any]]:
    url = f"{fleet.url}/n/{index}"
    records, _ = fetch_all_records(_client(index), url, _public_key(fleet, index), limit=1000)
    check_chain(records, prev_hash=GENESIS, first_seq=1)
    return records


def _infer(fleet: Process, index: int, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{fleet.url}/n/{index}/{CHAT}", json=body, headers={RECEIPT_HEADER: token}, timeout=10
    )


def _check_window_records(fleet: Process, index: int, records: list[dict[str, Any]]) -> None:
    """Window records, receipts left out, are the seed's computation in order."""
    origin = httpx.get(f"{fleet.url}/_admin/fleet", timeout=5).json()["origin_window"]
    gpus = simulated_gpus(seed=SEED, node_key=fleet_node_id(SEED, index), count=GPUS, model="h100")
    windows = [record for record in records if "receipt" not in record["workload"]]
    for position, record in enumerate(windows):
        ordinal, gpu_index = divmod(position, GPUS)
        gpu = gpus[gpu_index]
        activity = window_activity(
            seed=SEED,
            node_key=fleet_node_id(SEED, index),
            gpu=gpu,
            ordinal=ordinal,
            window_ms=1000,
        )
        start = datetime.fromtimestamp(origin + ordinal, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert (record["gpu_uuid"], record["window_start"], record["busy_ms"]) == (
            gpu.uuid,
            start,
            activity.busy_ms,
        )
        assert record["workload"] == {"kind": activity.kind, "ref": activity.ref}


def test_receipt_records_land_at_the_head_and_windows_go_on_after_them(fleet: Process) -> None:
    index = 1
    agent = _public_key(fleet, index)
    before = _records(fleet, index)
    served = []
    for round_ in range(3):
        for max_tokens, stream in ((3, False), (5, True)):
            rid, token = make_receipt(PLATFORM, agent=agent)
            response = _infer(fleet, index, token, chat_body(max_tokens=max_tokens, stream=stream))
            assert response.status_code == 200
            served.append((rid, token, max_tokens))
        if round_ < 2:
            time.sleep(1.1)  # windows close in between: receipts interleave with them

    after = _records(fleet, index)

    assert after[: len(before)] == before  # what was served is never rewritten
    found = receipt_records(after)
    assert list(found) == [rid for rid, _, _ in served]
    for rid, token, max_tokens in served:
        record = found[rid]
        assert record["workload"] == {"kind": "inference", "ref": rid, "receipt": token}
        assert (
            record["gpu_uuid"]
            == simulated_gpus(
                seed=SEED, node_key=fleet_node_id(SEED, index), count=GPUS, model="h100"
            )[0].uuid
        )
        assert (record["busy_ms"], record["energy_mj"], record["requests"]) == (0, 0, 1)
        assert (record["input_tokens"], record["output_tokens"]) == (CHAT_PROMPT_TOKENS, max_tokens)
    seqs = [found[rid]["seq"] for rid, _, _ in served]
    windows_between = [
        sum(1 for r in after if seqs[i] < r["seq"] < seqs[i + 1]) for i in range(len(seqs) - 1)
    ]
    assert windows_between[1] >= GPUS and windows_between[3] >= GPUS  # the two sleeps
    _check_window_records(fleet, index, after)
    truth = signed_json(
        _client(index).get(f"{fleet.url}/n/{index}/v1/_sim/truth"), _public_key(fleet, index)
    )
    assert truth["receipts"] == {"records": 6, "input_tokens": 6 * 15, "output_tokens": 24}
    assert truth["record_count"] == truth["head_seq"]


def test_pages_are_stable_across_polls_after_receipts(fleet: Process) -> None:
    index = 2
    agent = _public_key(fleet, index)
    for _ in range(3):
        _infer(fleet, index, make_receipt(PLATFORM, agent=agent)[1], chat_body(max_tokens=1))
    records = _records(fleet, index)
    client = _client(index)
    found = receipt_records(records)
    for rid in found:
        seq = found[rid]["seq"]
        for after in (seq - 1, seq - 3, 0, 511, 512):
            expected = records[after : after + 4]
            page = client.get(
                f"{fleet.url}/n/{index}/v1/usage", params={"after": after, "limit": 4}
            )
            # Windows closing meanwhile may only add records past what was fetched before.
            assert signed_json(page, agent)["records"][: len(expected)] == expected


def test_receipts_are_per_node_and_served_once(fleet: Process) -> None:
    node_0, node_3 = _public_key(fleet, 0), _public_key(fleet, 3)
    _, for_node_0 = make_receipt(PLATFORM, agent=node_0)
    before = receipt_records(_records(fleet, 3))

    elsewhere = _infer(fleet, 3, for_node_0, chat_body())
    forged = _infer(
        fleet, 3, make_receipt(Ed25519PrivateKey.generate(), agent=node_3)[1], chat_body()
    )
    once = _infer(fleet, 0, for_node_0, chat_body())
    twice = _infer(fleet, 0, for_node_0, chat_body())
    stale = _infer(
        fleet, 0, make_receipt(PLATFORM, agent=node_0, iat=int(time.time()) - 400)[1], {}
    )

    assert (elsewhere.status_code, elsewhere.json()) == (401, {"error": "invalid_receipt"})
    assert (forged.status_code, forged.json()) == (401, {"error": "invalid_receipt"})
    assert once.status_code == 200
    assert (twice.status_code, twice.json()) == (409, {"error": "receipt_replayed"})
    assert (stale.status_code, stale.json()) == (401, {"error": "invalid_receipt"})
    assert receipt_records(_records(fleet, 3)) == before
    assert missing_node(fleet).status_code == 404


def missing_node(fleet: Process) -> httpx.Response:
    return httpx.post(f"{fleet.url}/n/{NODES}/{CHAT}", json=chat_body(), timeout=5)


def test_engine_faults_hit_only_their_node_and_the_engine_answers_directly(
    fleet: Process,
) -> None:
    httpx.post(
        f"{fleet.url}/_admin/faults",
        json={"nodes": [3], "fault": "engine_cut", "after_tokens": 2},
        timeout=5,
    ).raise_for_status()
    direct = httpx.post(
        f"{fleet.url}/n/0/engine/v1/chat/completions",
        json=chat_body(max_tokens=4, stream=True, stream_options={"include_usage": True}),
        timeout=5,
    )
    assert direct.status_code == 200
    assert sse_events(direct.content)[-2]["usage"] == {
        "prompt_tokens": 15,
        "completion_tokens": 4,
        "total_tokens": 19,
    }
    rid, token = make_receipt(PLATFORM, agent=_public_key(fleet, 3))

    with pytest.raises(httpx.RemoteProtocolError):
        _infer(fleet, 3, token, chat_body(max_tokens=8, stream=True))

    record = receipt_records(_records(fleet, 3))[rid]
    assert (record["input_tokens"], record["output_tokens"]) == (CHAT_PROMPT_TOKENS, 2)


def test_a_resumed_fleet_serves_the_same_journal_and_refuses_replays(
    tmp_path: Path, launcher: Launcher
) -> None:
    flags = _fleet_flags("--state-dir", str(tmp_path / "state"))
    fleet = launcher.fleet(*flags)
    agent = _public_key(fleet, 1)
    tokens = [make_receipt(PLATFORM, agent=agent)[1] for _ in range(3)]
    for token in tokens:
        assert _infer(fleet, 1, token, chat_body(max_tokens=2)).status_code == 200
    served = _records(fleet, 1)
    fleet.kill()

    resumed = launcher.fleet(*flags)

    assert _records(resumed, 1)[: len(served)] == served
    replay = _infer(resumed, 1, tokens[0], chat_body(max_tokens=2))
    assert (replay.status_code, replay.json()) == (409, {"error": "receipt_replayed"})
    fresh = make_receipt(PLATFORM, agent=agent)
    assert _infer(resumed, 1, fresh[1], chat_body(max_tokens=2)).status_code == 200
    assert list(receipt_records(_records(resumed, 1)))[-1] == fresh[0]
