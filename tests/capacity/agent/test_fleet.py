"""The fleet simulator over real HTTP: many agents, one process, each its own identity."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import pytest

from capacity.agent.fleet import fleet_node_id, fleet_poll_token
from capacity.agent.simulator import scheduled_resets
from tests.capacity.agent.conftest import Launcher, Process
from tests.capacity.agent.verification import (
    GENESIS,
    check_chain,
    fetch_all_records,
    signed_json,
    sum_records,
)

SEED = 11
NODES = 50
GPUS = 4
BACKFILL = 300  # one-second windows: 1200 records per node at start


@pytest.fixture(scope="module")
def fleet(module_launcher: Launcher) -> Process:
    return module_launcher.fleet(
        *("--nodes", str(NODES), "--seed", str(SEED), "--gpus-per-node", str(GPUS)),
        *("--window-seconds", "1", "--backfill-windows", str(BACKFILL)),
    )


def _client(index: int) -> httpx.Client:
    return httpx.Client(
        headers={"Authorization": f"Bearer {fleet_poll_token(SEED, index)}"}, timeout=10
    )


def _node_url(fleet: Process, index: int) -> str:
    return f"{fleet.url}/n/{index}"


def _info(fleet: Process, index: int) -> dict[str, Any]:
    response = _client(index).get(f"{_node_url(fleet, index)}/v1/info")
    assert response.status_code == 200
    info = response.json()
    return signed_json(response, info["public_key"])  # type: ignore[no-any-return]


def test_first_and_last_nodes_have_distinct_identities_and_valid_chains(fleet: Process) -> None:
    first, last = _info(fleet, 0), _info(fleet, NODES - 1)

    assert (first["node_id"], last["node_id"]) == ("fleet-11-0", "fleet-11-49")
    assert first["public_key"] != last["public_key"]
    assert first["journal_epoch"] != last["journal_epoch"]
    assert len(first["gpus"]) == len(last["gpus"]) == GPUS
    assert {g["uuid"] for g in first["gpus"]}.isdisjoint({g["uuid"] for g in last["gpus"]})
    for index, info in ((0, first), (NODES - 1, last)):
        client = _client(index)
        truth = signed_json(
            client.get(f"{_node_url(fleet, index)}/v1/_sim/truth"), info["public_key"]
        )
        records, page = fetch_all_records(
            client,
            _node_url(fleet, index),
            info["public_key"],
            limit=500,
            up_to_seq=truth["head_seq"],
        )
        records = records[: truth["head_seq"]]

        assert truth["head_seq"] >= BACKFILL * GPUS
        check_chain(records, prev_hash=GENESIS, first_seq=1)
        assert page["journal_epoch"] == info["journal_epoch"]
        assert sum_records(records) == {k: truth["total"][k] for k in sum_records([])}
        assert {r["gpu_uuid"] for r in records} == {g["uuid"] for g in info["gpus"]}


def test_pages_are_rebuilt_identically_from_checkpoints(fleet: Process) -> None:
    index = 7
    client, public_key = _client(index), _info(fleet, index)["public_key"]
    records, _ = fetch_all_records(client, _node_url(fleet, index), public_key, limit=1000)

    for after in (700, 3, 1023, 1024, 0):
        page = signed_json(
            client.get(f"{_node_url(fleet, index)}/v1/usage", params={"after": after, "limit": 5}),
            public_key,
        )
        assert page["records"] == records[after : after + 5]


def test_each_node_takes_only_its_own_token_and_tokens_can_be_replaced(fleet: Process) -> None:
    url = f"{_node_url(fleet, 49)}/v1/usage"

    assert _client(0).get(url).status_code == 401
    assert _client(0).get(url).content == b'{"error":"unauthorized"}'
    new_hash = hashlib.sha256(b"token-from-the-platform").hexdigest()
    response = httpx.post(
        f"{_node_url(fleet, 49)}/_admin/token", json={"poll_token_sha256": new_hash}, timeout=5
    )
    assert response.status_code == 200

    assert _client(49).get(url).status_code == 401
    enrolled = httpx.get(url, headers={"Authorization": "Bearer token-from-the-platform"})
    assert enrolled.status_code == 200
    bad = httpx.post(f"{_node_url(fleet, 49)}/_admin/token", json={"poll_token_sha256": "x"})
    assert bad.status_code == 400


def _fault(fleet: Process, payload: dict[str, Any]) -> None:
    response = httpx.post(f"{fleet.url}/_admin/faults", json=payload, timeout=5)
    assert response.status_code == 200, response.text


def test_http_5xx_fault_answers_errors_then_recovers(fleet: Process) -> None:
    url, client = f"{_node_url(fleet, 3)}/v1/usage", _client(3)
    _fault(fleet, {"nodes": [3], "fault": "http_5xx", "count": 2, "status": 502})

    assert [client.get(url).status_code for _ in range(3)] == [502, 502, 200]
    assert _client(4).get(f"{_node_url(fleet, 4)}/v1/usage").status_code == 200


def test_duplicate_page_fault_repeats_the_previous_page(fleet: Process) -> None:
    url, client = f"{_node_url(fleet, 5)}/v1/usage", _client(5)
    public_key = _info(fleet, 5)["public_key"]
    first = signed_json(client.get(url, params={"after": 0, "limit": 10}), public_key)
    _fault(fleet, {"node": 5, "fault": "duplicate_page"})

    duplicate = signed_json(client.get(url, params={"after": 10, "limit": 10}), public_key)
    following = signed_json(client.get(url, params={"after": 10, "limit": 10}), public_key)

    assert duplicate["records"] == first["records"]
    assert [r["seq"] for r in duplicate["records"]] == list(range(1, 11))
    assert [r["seq"] for r in following["records"]] == list(range(11, 21))


def test_timeout_fault_holds_the_answer_past_the_read_timeout(fleet: Process) -> None:
    url, client = f"{_node_url(fleet, 6)}/v1/info", _client(6)
    _fault(fleet, {"nodes": [6], "fault": "timeout", "delay_ms": 1500})

    with pytest.raises(httpx.ReadTimeout):
        client.get(url, timeout=httpx.Timeout(5, read=0.3))
    assert client.get(url).status_code == 200


def test_restart_fault_changes_boot_id_and_keeps_the_chain(fleet: Process) -> None:
    before = _info(fleet, 8)
    client = _client(8)
    records, _ = fetch_all_records(client, _node_url(fleet, 8), before["public_key"])
    _fault(fleet, {"nodes": [8], "fault": "restart"})
    time.sleep(1.1)  # at least one more window

    after = _info(fleet, 8)
    page = signed_json(
        client.get(f"{_node_url(fleet, 8)}/v1/usage", params={"after": len(records)}),
        after["public_key"],
    )

    assert after["boot_id"] != before["boot_id"]
    assert (after["journal_epoch"], after["public_key"]) == (
        before["journal_epoch"],
        before["public_key"],
    )
    assert page["records"]
    check_chain(page["records"], prev_hash=records[-1]["hash"], first_seq=len(records) + 1)


def _expected_counter_resets(index: int, windows: int, *, forced_at: int | None = None) -> int:
    """GPU-windows among the first ``windows`` of node ``index`` whose counters restart:
    those the seed schedules, and every GPU in the window a ``counter_reset`` fault hit."""
    node_key = fleet_node_id(SEED, index)
    resets = 0
    for ordinal in range(windows):
        for gpu_index in range(GPUS):
            scheduled = scheduled_resets(
                seed=SEED, node_key=node_key, gpu_index=gpu_index, ordinal=ordinal
            )
            resets += ordinal == forced_at or scheduled.energy or scheduled.tokens
    return resets


def test_counter_reset_fault_keeps_totals_exact(fleet: Process) -> None:
    # Node 44: its seed schedules no reset in windows 300-356, so whichever of them the
    # fault lands in, every GPU's reset there is the fault's own.
    index = 44
    client, public_key = _client(index), _info(fleet, index)["public_key"]
    truth_url = f"{_node_url(fleet, index)}/v1/_sim/truth"
    before = signed_json(client.get(truth_url), public_key)
    _fault(fleet, {"nodes": [index], "fault": "counter_reset"})
    time.sleep(1.1)

    truth = signed_json(client.get(truth_url), public_key)
    records, _ = fetch_all_records(
        client, _node_url(fleet, index), public_key, up_to_seq=truth["head_seq"]
    )
    records = records[: truth["head_seq"]]

    windows_before, windows_after = before["head_seq"] // GPUS, truth["head_seq"] // GPUS
    assert before["total"]["counter_resets"] == _expected_counter_resets(index, windows_before)
    # The fault hits the first window not yet done when it arrives: one of these.
    expected = {
        _expected_counter_resets(index, windows_after, forced_at=ordinal)
        for ordinal in range(windows_before, windows_after)
    }
    assert expected == {truth["total"]["counter_resets"]}
    assert sum_records(records) == {k: truth["total"][k] for k in sum_records([])}


@pytest.mark.parametrize(
    "payload",
    [{"nodes": [NODES], "fault": "restart"}, {"nodes": [0], "fault": "melt"}, {"fault": "restart"}],
)
def test_bad_fault_requests_are_refused(fleet: Process, payload: dict[str, Any]) -> None:
    assert httpx.post(f"{fleet.url}/_admin/faults", json=payload).status_code == 400


def test_unknown_nodes_are_404(fleet: Process) -> None:
    assert _client(0).get(f"{fleet.url}/n/{NODES}/v1/info").status_code == 404
    assert _client(0).get(f"{fleet.url}/n/-1/v1/info").status_code == 404
