"""The agent as the platform sees it: a subprocess spoken to over real HTTP.

Everything is checked from the outside with ``verification`` (``cryptography`` and
``hashlib`` directly), never with the agent's own helpers. Expected usage comes from the
simulator's pure ``window_activity`` and the reset schedule its seed fixes: that is the
ground truth a correct agent must report, whatever the clock.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from capacity.agent.simulator import simulated_gpus, window_activity
from tests.capacity.agent.conftest import Launcher, Process
from tests.capacity.agent.verification import (
    GENESIS,
    check_chain,
    check_signature,
    fetch_all_records,
    signed_json,
    sum_records,
)

TOKEN = "poll-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GPU_UUIDS = ["GPU-184153be-8c0f-0cda-d616-9ae3ec3f44d9", "GPU-69ca3a1b-d018-f4ee-1109-e8a6d07d27e1"]
H100_MAX_POWER_W = 700


def _sim_flags(*extra: str) -> list[str]:
    return ["--simulate", "--gpus", "2", "--seed", "7", "--poll-token", TOKEN, *extra]


@pytest.fixture(scope="module")
def steady_agent(module_launcher: Launcher) -> Process:
    """600 one-minute windows of backfill: 1200 records, no new ones for up to a minute."""
    journal = module_launcher.directory / "steady.sqlite3"
    return module_launcher.agent(journal, *_sim_flags("--backfill-windows", "600"))


@pytest.fixture(scope="module")
def client() -> httpx.Client:
    return httpx.Client(headers=AUTH, timeout=10)


def _info(client: httpx.Client, agent: Process) -> dict[str, Any]:
    response = client.get(f"{agent.url}/v1/info")
    assert response.status_code == 200
    info = response.json()
    check_signature(info["public_key"], response.content, response.headers["X-Agent-Signature"])
    return info


def _truth(client: httpx.Client, agent: Process, public_key: str) -> dict[str, Any]:
    response = client.get(f"{agent.url}/v1/_sim/truth")
    assert response.status_code == 200
    return signed_json(response, public_key)  # type: ignore[no-any-return]


def _check_usage_against_truth(client: httpx.Client, agent: Process) -> dict[str, Any]:
    """All records so far: valid chain, possible values, totals equal to the truth."""
    info = _info(client, agent)
    truth = _truth(client, agent, info["public_key"])
    records, _ = fetch_all_records(client, agent.url, info["public_key"], limit=1000)
    records = records[: truth["head_seq"]]

    assert len(records) == truth["head_seq"] == truth["record_count"]
    check_chain(records, prev_hash=GENESIS, first_seq=1)
    now = datetime.now(tz=UTC)
    for record in records:
        start = datetime.fromisoformat(record["window_start"])
        end = datetime.fromisoformat(record["window_end"])
        window_ms = int((end - start).total_seconds()) * 1000
        assert record["window_end"].endswith("Z")
        assert end <= now
        assert 0 < window_ms <= 60_000
        assert 0 <= record["busy_ms"] <= window_ms
        assert 0 <= record["energy_mj"] <= H100_MAX_POWER_W * window_ms
        assert min(record["input_tokens"], record["output_tokens"], record["requests"]) >= 0
        assert record["workload"]["kind"] in ("assignment", "inference", "idle")
    for gpu_uuid in GPU_UUIDS:
        windows = [
            (r["window_start"], r["window_end"]) for r in records if r["gpu_uuid"] == gpu_uuid
        ]
        assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(windows))
        gpu_truth = next(g for g in truth["gpus"] if g["gpu_uuid"] == gpu_uuid)
        expected = {name: gpu_truth[name] for name in sum_records([])}
        assert sum_records([r for r in records if r["gpu_uuid"] == gpu_uuid]) == expected
    assert sum_records(records) == {name: truth["total"][name] for name in sum_records([])}
    return {"info": info, "truth": truth, "records": records}


def test_info_is_signed_and_describes_the_node(steady_agent: Process, client: httpx.Client) -> None:
    info = _info(client, steady_agent)

    assert sorted(info) == [
        "agent_version",
        "boot_id",
        "gpus",
        "journal_epoch",
        "node_id",
        "protocol",
        "public_key",
        "time",
    ]
    assert (info["protocol"], info["node_id"], info["agent_version"]) == (1, "sim-7", "1.0.0")
    assert info["gpus"] == [
        {"uuid": uuid, "model": "NVIDIA H100 80GB HBM3", "memory_mib": 81559} for uuid in GPU_UUIDS
    ]
    key_file = Path(f"{steady_agent.log.parent / 'steady.sqlite3'}.key")
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_signature_covers_the_exact_body(steady_agent: Process, client: httpx.Client) -> None:
    response = client.get(f"{steady_agent.url}/v1/info")
    public_key = response.json()["public_key"]
    tampered = response.content.replace(b'"protocol":1', b'"protocol":2')

    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        check_signature(public_key, tampered, response.headers["X-Agent-Signature"])


def test_usage_chain_and_totals_match_the_ground_truth(
    steady_agent: Process, client: httpx.Client
) -> None:
    checked = _check_usage_against_truth(client, steady_agent)

    assert checked["truth"]["head_seq"] >= 1200
    # Nothing was assigned while the backfill ran: every GPU idled through every window
    # at the H100's idle power (70 W x 60 s), counter resets included.
    first = checked["records"][0]
    assert (first["seq"], first["gpu_uuid"], first["workload"]) == (
        1,
        GPU_UUIDS[0],
        {"kind": "idle", "ref": None},
    )
    assert {
        (r["busy_ms"], r["energy_mj"], r["input_tokens"], r["output_tokens"], r["requests"])
        for r in checked["records"]
    } == {(0, 4_200_000, 0, 0, 0)}
    assert {r["workload"]["kind"] for r in checked["records"]} == {"idle"}
    # Seed 7 schedules 33 resets in the 600 backfilled windows (the last in window 555)
    # and the next in window 609, at least nine minutes after start-up: none in this module.
    assert checked["truth"]["total"]["counter_resets"] == 33


def test_pages_follow_after_and_limit(steady_agent: Process, client: httpx.Client) -> None:
    info = _info(client, steady_agent)
    whole = signed_json(
        client.get(f"{steady_agent.url}/v1/usage", params={"after": 0, "limit": 100}),
        info["public_key"],
    )
    small_pages: list[dict[str, Any]] = []
    while len(small_pages) < 100:
        page = signed_json(
            client.get(
                f"{steady_agent.url}/v1/usage", params={"after": len(small_pages), "limit": 7}
            ),
            info["public_key"],
        )
        assert [r["seq"] for r in page["records"]] == list(
            range(len(small_pages) + 1, len(small_pages) + 8)
        )
        small_pages.extend(page["records"])

    assert len(small_pages) == 105
    assert small_pages[:100] == whole["records"]
    assert sorted(whole) == ["assignments", "head_hash", "head_seq", "journal_epoch", "records"]
    assert whole["journal_epoch"] == info["journal_epoch"]
    default = client.get(f"{steady_agent.url}/v1/usage").json()
    assert [r["seq"] for r in default["records"]] == list(range(1, 501))
    capped = client.get(f"{steady_agent.url}/v1/usage", params={"limit": 5000}).json()
    assert [r["seq"] for r in capped["records"]] == list(range(1, 1001))
    from_middle = client.get(f"{steady_agent.url}/v1/usage", params={"after": 1150, "limit": 3})
    assert [r["seq"] for r in from_middle.json()["records"]] == [1151, 1152, 1153]
    beyond = client.get(f"{steady_agent.url}/v1/usage", params={"after": 10**9}).json()
    assert beyond["records"] == []
    assert beyond["head_seq"] >= 1200


@pytest.mark.parametrize(
    "params",
    [{"after": "-1"}, {"after": "abc"}, {"limit": "0"}, {"limit": "1.5"}, {"after": "\uff11"}],
)
def test_bad_usage_parameters_are_a_signed_400(
    steady_agent: Process, client: httpx.Client, params: dict[str, str]
) -> None:
    public_key = _info(client, steady_agent)["public_key"]

    response = client.get(f"{steady_agent.url}/v1/usage", params=params)

    assert response.status_code == 400
    assert signed_json(response, public_key)["error"] == "invalid_parameter"


@pytest.mark.parametrize("path", ["/v1/info", "/v1/health", "/v1/usage", "/v1/_sim/truth"])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        f"Basic {TOKEN}",
        f"Bearer {hashlib.sha256(TOKEN.encode()).hexdigest()}",
        f"Bearer {TOKEN}x",
        "Bearer",
    ],
)
def test_anything_but_the_poll_token_is_401_without_data(
    steady_agent: Process, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = httpx.get(f"{steady_agent.url}{path}", headers=headers, timeout=10)

    assert response.status_code == 401
    assert response.content == b'{"error":"unauthorized"}'


def test_duplicate_page_fault_serves_the_previous_page_again(
    launcher: Launcher, client: httpx.Client, tmp_path: Path
) -> None:
    agent = launcher.agent(tmp_path / "dup.sqlite3", *_sim_flags("--backfill-windows", "10"))
    public_key = _info(client, agent)["public_key"]
    url = f"{agent.url}/v1/usage"
    first = client.get(url, params={"after": 0, "limit": 4})

    injected = httpx.post(f"{agent.url}/_admin/faults", json={"fault": "duplicate_page"})
    duplicate = client.get(url, params={"after": 4, "limit": 4})
    following = client.get(url, params={"after": 4, "limit": 4})

    assert injected.status_code == 200
    assert signed_json(duplicate, public_key)["records"] == first.json()["records"]
    assert [r["seq"] for r in signed_json(following, public_key)["records"]] == [5, 6, 7, 8]


def test_health_reports_every_gpu_in_integer_units(
    steady_agent: Process, client: httpx.Client
) -> None:
    public_key = _info(client, steady_agent)["public_key"]

    health = signed_json(client.get(f"{steady_agent.url}/v1/health"), public_key)

    assert [gpu["gpu_uuid"] for gpu in health["gpus"]] == GPU_UUIDS
    for gpu in health["gpus"]:
        assert sorted(gpu) == [
            "gpu_uuid",
            "memory_used_mib",
            "power_mw",
            "temperature_c",
            "utilization_pct",
            "xid_errors",
        ]
        assert all(isinstance(value, int) for key, value in gpu.items() if key != "gpu_uuid")
        assert 0 <= gpu["utilization_pct"] <= 100
        assert 0 < gpu["power_mw"] <= H100_MAX_POWER_W * 1000
    assert health["time"].endswith("Z")


def _wait_for_head(client: httpx.Client, agent: Process, minimum: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page = client.get(f"{agent.url}/v1/usage", params={"after": 10**9}).json()
        if page["head_seq"] >= minimum:
            return
        time.sleep(0.1)
    raise AssertionError(f"head did not reach {minimum}")


def test_restart_continues_the_chain_in_the_same_epoch(
    launcher: Launcher, client: httpx.Client, tmp_path: Path
) -> None:
    journal = tmp_path / "restart.sqlite3"
    flags = _sim_flags("--window-seconds", "1", "--backfill-windows", "20")
    agent = launcher.agent(journal, *flags)
    _wait_for_head(client, agent, 40)
    before = _check_usage_against_truth(client, agent)
    agent.kill()

    restarted = launcher.agent(journal, *flags, port=agent.port)
    _wait_for_head(client, restarted, before["truth"]["head_seq"] + 4)
    after = _check_usage_against_truth(client, restarted)

    assert after["info"]["journal_epoch"] == before["info"]["journal_epoch"]
    assert after["info"]["public_key"] == before["info"]["public_key"]
    assert after["info"]["boot_id"] != before["info"]["boot_id"]
    old_count = len(before["records"])
    assert after["records"][:old_count] == before["records"]
    assert after["records"][old_count]["prev_hash"] == before["records"][-1]["hash"]
    # the truth survived the restart too: it counts the records served before it
    assert after["truth"]["record_count"] == len(after["records"])


def test_a_lost_journal_starts_a_new_epoch_with_the_same_key(
    launcher: Launcher, client: httpx.Client, tmp_path: Path
) -> None:
    journal = tmp_path / "lost.sqlite3"
    agent = launcher.agent(journal, *_sim_flags("--backfill-windows", "3"))
    first = _info(client, agent)
    agent.kill()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)

    again = launcher.agent(journal, *_sim_flags("--backfill-windows", "3"), port=agent.port)
    second = _info(client, again)

    assert second["journal_epoch"] != first["journal_epoch"]
    assert second["public_key"] == first["public_key"]
    records, _ = fetch_all_records(client, again.url, second["public_key"])
    assert records[0]["seq"] == 1
    assert records[0]["prev_hash"] == GENESIS


def test_injected_counter_reset_gives_no_negative_delta_and_exact_totals(
    launcher: Launcher, client: httpx.Client, tmp_path: Path
) -> None:
    agent = launcher.agent(
        tmp_path / "reset.sqlite3", *_sim_flags("--window-seconds", "1", "--backfill-windows", "5")
    )
    public_key = _info(client, agent)["public_key"]
    resets_before = _truth(client, agent, public_key)["total"]["counter_resets"]
    head_before = client.get(f"{agent.url}/v1/usage", params={"after": 10**9}).json()["head_seq"]

    response = httpx.post(f"{agent.url}/_admin/faults", json={"fault": "counter_reset"}, timeout=5)
    assert response.status_code == 200
    _wait_for_head(client, agent, head_before + 4)

    checked = _check_usage_against_truth(client, agent)
    # In windows 0-38 seed 7 schedules one reset: GPU 0's energy counter in window 2, one
    # of the five backfilled. The injected reset restarts both GPUs' counters in the next
    # window (each of them below its old reading, so seen at once), whichever window that is.
    assert resets_before == 1
    assert checked["truth"]["total"]["counter_resets"] == 3
    # Every record is the window's true usage: the reset cost nothing and added nothing.
    gpus = simulated_gpus(seed=7, node_key="sim-7", count=2, model="h100")
    true_usage = [
        window_activity(
            seed=7,
            node_key="sim-7",
            gpu=gpus[(seq - 1) % 2],
            ordinal=(seq - 1) // 2,
            window_ms=1000,
        )
        for seq in range(1, len(checked["records"]) + 1)
    ]
    assert [
        (r["busy_ms"], r["energy_mj"], r["input_tokens"], r["output_tokens"], r["requests"])
        for r in checked["records"]
    ] == [(a.busy_ms, a.energy_mj, a.input_tokens, a.output_tokens, a.requests) for a in true_usage]


def test_speed_compresses_generation_but_never_passes_real_time(
    launcher: Launcher, client: httpx.Client, tmp_path: Path
) -> None:
    agent = launcher.agent(
        tmp_path / "speed.sqlite3",
        *_sim_flags("--window-seconds", "1", "--backfill-windows", "100", "--speed", "10"),
    )

    early = client.get(f"{agent.url}/v1/usage", params={"after": 10**9}).json()["head_seq"]
    _wait_for_head(client, agent, early + 10)

    assert early < 200  # 100 windows x 2 GPUs are not all there at once
    checked = _check_usage_against_truth(client, agent)  # and none ends in the future
    assert len(checked["records"]) >= early + 10


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [("127.0.0.1", True), ("::1", True), ("10.0.0.7", False), ("garbage", False), (None, False)],
)
def test_admin_endpoints_answer_loopback_only(remote: str | None, allowed: bool) -> None:
    from capacity.agent.server import is_loopback

    assert is_loopback(remote) is allowed
