"""Receipted inference on a real agent process (protocol v1.1), over real HTTP.

The gateway's side is played by the test: it holds a platform key, signs receipts with
``cryptography`` directly, and checks the journal's signatures and chain independently.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent.inference import engine_body
from capacity.agent.receipts import parse_receipt
from tests.capacity.agent.conftest import Launcher, Process, free_port
from tests.capacity.agent.receipting import (
    CHAT_PROMPT_TOKENS,
    RECEIPT_HEADER,
    all_records,
    chat_body,
    make_receipt,
    raw_public_b64,
    receipt_records,
    sse_events,
)

TOKEN = "poll-token-for-inference"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# simulated_gpus(seed=7, node_key="sim-7", count=2)[0]: the node's first GPU.
FIRST_GPU = "GPU-184153be-8c0f-0cda-d616-9ae3ec3f44d9"
PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
CHAT = "/v1/inference/chat/completions"
COMPLETIONS = "/v1/inference/completions"


def _flags(*extra: str) -> list[str]:
    return [
        *("--simulate", "--gpus", "2", "--seed", "7", "--poll-token", TOKEN),
        *("--platform-key", raw_public_b64(PLATFORM)),
        *("--engine-ttft-ms", "0", "--engine-tokens-per-second", "0"),
        *extra,
    ]


@pytest.fixture(scope="module")
def agent(module_launcher: Launcher) -> Process:
    return module_launcher.agent(module_launcher.directory / "inference.sqlite3", *_flags())


@pytest.fixture(scope="module")
def client() -> httpx.Client:
    return httpx.Client(headers=AUTH, timeout=10)


def _public_key(client: httpx.Client, agent: Process) -> str:
    return str(client.get(f"{agent.url}/v1/info").json()["public_key"])


def _receipt(client: httpx.Client, agent: Process, **claims: Any) -> tuple[str, str]:
    return make_receipt(PLATFORM, agent=_public_key(client, agent), **claims)


def _post(agent: Process, path: str, token: str | None, body: dict[str, Any]) -> httpx.Response:
    headers = {} if token is None else {RECEIPT_HEADER: token}
    return httpx.post(f"{agent.url}{path}", json=body, headers=headers, timeout=10)


def _record(client: httpx.Client, agent: Process, rid: str) -> dict[str, Any]:
    records = all_records(client, agent.url, _public_key(client, agent))
    return receipt_records(records)[rid]


def _fault(agent: Process, **payload: Any) -> None:
    response = httpx.post(f"{agent.url}/_admin/faults", json=payload, timeout=5)
    assert response.status_code == 200, response.text


# --- receipts ---------------------------------------------------------------------------


def test_requests_without_a_valid_receipt_are_refused_and_journal_nothing(
    client: httpx.Client, agent: Process
) -> None:
    own_key = _public_key(client, agent)
    other_platform = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    other_agent = raw_public_b64(Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34))))
    now = int(time.time())
    _, good = _receipt(client, agent)
    claims, signature = good.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    tampered_claims["max_output_tokens"] = 999_999
    refused_tokens = {
        "missing": None,
        "empty": "",
        "garbage": "not-a-receipt",
        "signed by another key": make_receipt(other_platform, agent=own_key)[1],
        "another node's": make_receipt(PLATFORM, agent=other_agent)[1],
        "stale (301 s old)": make_receipt(PLATFORM, agent=own_key, iat=now - 301)[1],
        "from the future (303 s ahead)": make_receipt(PLATFORM, agent=own_key, iat=now + 303)[1],
        "claims changed after signing": base64.urlsafe_b64encode(
            json.dumps(tampered_claims, sort_keys=True, separators=(",", ":")).encode()
        )
        .rstrip(b"=")
        .decode()
        + f".{signature}",
    }
    before = all_records(client, agent.url, own_key)

    for name, token in refused_tokens.items():
        response = _post(agent, CHAT, token, chat_body())
        assert (name, response.status_code, response.json()) == (
            name,
            401,
            {"error": "invalid_receipt"},
        )

    after = all_records(client, agent.url, own_key)
    assert receipt_records(after) == receipt_records(before)


def test_a_receipt_serves_once_then_is_a_replay(client: httpx.Client, agent: Process) -> None:
    rid, token = _receipt(client, agent)

    first = _post(agent, CHAT, token, chat_body(max_tokens=3))
    again = _post(agent, CHAT, token, chat_body(max_tokens=3))
    streamed_again = _post(agent, COMPLETIONS, token, {"prompt": "hi", "stream": True})

    assert first.status_code == 200
    assert (again.status_code, again.json()) == (409, {"error": "receipt_replayed"})
    assert (streamed_again.status_code, streamed_again.json()) == (
        409,
        {"error": "receipt_replayed"},
    )
    assert _record(client, agent, rid)["output_tokens"] == 3


def test_a_replay_after_a_restart_is_refused(tmp_path: Path, launcher: Launcher) -> None:
    journal = tmp_path / "restart.sqlite3"
    agent = launcher.agent(journal, *_flags())
    with httpx.Client(headers=AUTH, timeout=10) as client:
        rid, token = _receipt(client, agent)
        assert _post(agent, CHAT, token, chat_body(max_tokens=2)).status_code == 200
        agent.kill()  # SIGKILL: nothing flushed on the way out
        restarted = launcher.agent(journal, *_flags(), port=agent.port)

        replay = _post(restarted, CHAT, token, chat_body(max_tokens=2))

        assert (replay.status_code, replay.json()) == (409, {"error": "receipt_replayed"})
        records = all_records(client, restarted.url, _public_key(client, restarted))
        assert list(receipt_records(records)) == [rid]
        truth = client.get(f"{restarted.url}/v1/_sim/truth").json()
        assert truth["receipts"] == {"records": 1, "input_tokens": 15, "output_tokens": 2}


def test_without_a_platform_key_no_receipt_is_accepted(tmp_path: Path, launcher: Launcher) -> None:
    flags = [flag for flag in _flags() if flag not in ("--platform-key", raw_public_b64(PLATFORM))]
    agent = launcher.agent(tmp_path / "keyless.sqlite3", *flags)
    with httpx.Client(headers=AUTH, timeout=10) as client:
        _, token = _receipt(client, agent)
    response = _post(agent, CHAT, token, chat_body())
    assert (response.status_code, response.json()) == (401, {"error": "invalid_receipt"})


def test_the_poll_token_does_not_open_inference_nor_a_receipt_the_poll_routes(
    client: httpx.Client, agent: Process
) -> None:
    response = httpx.post(f"{agent.url}{CHAT}", json=chat_body(), headers=AUTH, timeout=5)
    assert (response.status_code, response.json()) == (401, {"error": "invalid_receipt"})
    _, token = _receipt(client, agent)
    usage = httpx.get(f"{agent.url}/v1/usage", headers={RECEIPT_HEADER: token}, timeout=5)
    assert usage.status_code == 401


# --- relay ------------------------------------------------------------------------------


def test_non_streaming_chat_is_relayed_with_exact_usage_and_journaled(
    client: httpx.Client, agent: Process
) -> None:
    rid, token = _receipt(client, agent, max_input_tokens=40, max_output_tokens=5)
    started = datetime.now(tz=UTC).replace(microsecond=0)

    response = _post(agent, CHAT, token, chat_body(max_tokens=5))

    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "llama-3-8b"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": " tok0 tok1 tok2 tok3 tok4"},
            "finish_reason": "length",
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20}
    record = _record(client, agent, rid)
    assert record["workload"] == {"kind": "inference", "ref": rid, "receipt": token}
    assert {key: record[key] for key in record if key not in ("workload", "seq")} == {
        "prev_hash": record["prev_hash"],
        "hash": record["hash"],
        "gpu_uuid": FIRST_GPU,
        "window_start": record["window_start"],
        "window_end": record["window_end"],
        "busy_ms": 0,
        "energy_mj": 0,
        "input_tokens": 15,
        "output_tokens": 5,
        "requests": 1,
    }
    start = datetime.fromisoformat(record["window_start"])
    end = datetime.fromisoformat(record["window_end"])
    assert started <= start < end <= datetime.now(tz=UTC).replace(microsecond=0) + (end - start)
    assert (end - start).total_seconds() <= 60


def test_non_streaming_completions_count_prompt_words(client: httpx.Client, agent: Process) -> None:
    # No max_tokens: the agent sends the receipt's bound (16 here) as the engine's.
    rid, token = _receipt(client, agent, max_output_tokens=16)

    response = _post(agent, COMPLETIONS, token, {"model": "m", "prompt": "one two three"})

    answer = response.json()
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == "".join(f" tok{i}" for i in range(16))
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}
    record = _record(client, agent, rid)
    assert (record["input_tokens"], record["output_tokens"]) == (3, 16)


def test_streaming_chat_relays_one_token_per_chunk_and_the_usage(
    client: httpx.Client, agent: Process
) -> None:
    rid, token = _receipt(client, agent)

    # The buyer asked for no usage; the agent asks the engine for it anyway.
    response = _post(agent, CHAT, token, chat_body(max_tokens=4, stream=True))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [chunk["choices"] for chunk in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        *[
            [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}]
            for i in range(3)
        ],
        [{"index": 0, "delta": {"content": " tok3"}, "finish_reason": "length"}],
        [],
    ]
    # continuous_usage_stats: the usage so far on every chunk, the total on the last.
    assert [chunk["usage"]["completion_tokens"] for chunk in chunks] == [0, 1, 2, 3, 4, 4]
    assert chunks[-1]["usage"] == {"prompt_tokens": 15, "completion_tokens": 4, "total_tokens": 19}
    record = _record(client, agent, rid)
    assert (record["input_tokens"], record["output_tokens"], record["requests"]) == (15, 4, 1)


def test_streaming_completions_keep_the_buyers_stream_options(
    client: httpx.Client, agent: Process
) -> None:
    rid, token = _receipt(client, agent)
    body = {"prompt": ["a b", "c"], "max_tokens": 2, "stream": True}
    body["stream_options"] = {"include_usage": False}

    events = sse_events(_post(agent, COMPLETIONS, token, body).content)

    assert [event["choices"][0]["text"] for event in events[:2]] == [" tok0", " tok1"]
    assert events[2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert events[3] == "[DONE]"
    record = _record(client, agent, rid)
    assert (record["input_tokens"], record["output_tokens"]) == (3, 2)


def test_max_tokens_above_the_receipt_is_lowered_to_it(
    client: httpx.Client, agent: Process
) -> None:
    rid, token = _receipt(client, agent, max_output_tokens=3)

    answer = _post(agent, CHAT, token, chat_body(max_tokens=50)).json()

    assert answer["usage"]["completion_tokens"] == 3
    assert _record(client, agent, rid)["output_tokens"] == 3


def test_without_max_tokens_the_engine_is_bounded_by_the_receipt(
    client: httpx.Client, relaying_agent: Process
) -> None:
    """A real engine (here behind ``--engine-url``) given no bound would generate until
    its context is full; the agent forwards the receipt's ``max_output_tokens`` instead
    (the simulator's own default, 16, would otherwise show)."""
    whole_rid, whole = _receipt(client, relaying_agent, max_output_tokens=5)
    streamed_rid, streamed = _receipt(client, relaying_agent, max_output_tokens=3)

    answer = _post(relaying_agent, CHAT, whole, chat_body()).json()
    events = sse_events(
        _post(relaying_agent, COMPLETIONS, streamed, {"prompt": "a b", "stream": True}).content
    )

    assert answer["choices"][0]["message"]["content"] == " tok0 tok1 tok2 tok3 tok4"
    assert answer["usage"] == {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20}
    assert [e["choices"][0]["text"] for e in events[:-2]] == [" tok0", " tok1", " tok2"]
    assert events[-2]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    records = receipt_records(
        all_records(client, relaying_agent.url, _public_key(client, relaying_agent))
    )
    assert [
        (records[rid]["input_tokens"], records[rid]["output_tokens"])
        for rid in (whole_rid, streamed_rid)
    ] == [(15, 5), (2, 3)]


@pytest.mark.parametrize(
    ("bounds", "forwarded"),
    [
        ({}, {"max_tokens": 7}),
        ({"max_tokens": None}, {"max_tokens": 7}),
        ({"max_completion_tokens": None}, {"max_completion_tokens": None, "max_tokens": 7}),
        ({"max_tokens": 3}, {"max_tokens": 3}),
        ({"max_completion_tokens": 50}, {"max_completion_tokens": 7}),
        ({"max_tokens": 2.0}, {"max_tokens": 2.0}),
        ({"max_tokens": "100000"}, {"max_tokens": 7}),
        (
            {"max_tokens": 9, "max_completion_tokens": 4},
            {"max_tokens": 7, "max_completion_tokens": 4},
        ),
    ],
)
def test_engine_body_always_carries_an_output_bound_within_the_receipt(
    bounds: dict[str, Any], forwarded: dict[str, Any]
) -> None:
    receipt = parse_receipt(
        make_receipt(PLATFORM, agent="agent-key", max_output_tokens=7)[1], PLATFORM.public_key()
    )
    body = {"model": "m", "prompt": "x", **bounds}

    assert json.loads(engine_body(body, receipt)) == {"model": "m", "prompt": "x", **forwarded}


def test_the_engine_is_timed_as_configured(tmp_path: Path, launcher: Launcher) -> None:
    flags = _flags()
    flags[flags.index("--engine-ttft-ms") + 1] = "300"
    flags[flags.index("--engine-tokens-per-second") + 1] = "20"
    agent = launcher.agent(tmp_path / "timed.sqlite3", *flags)
    with httpx.Client(headers=AUTH, timeout=10) as client:
        _, token = _receipt(client, agent)
    began = time.monotonic()
    arrivals = []
    body = chat_body(max_tokens=5, stream=True)
    with httpx.stream(
        "POST", f"{agent.url}{CHAT}", json=body, headers={RECEIPT_HEADER: token}
    ) as response:
        for line in response.iter_lines():
            if '"content":" tok' in line:
                arrivals.append(time.monotonic() - began)
    assert len(arrivals) == 5
    assert arrivals[0] >= 0.3  # first token after ttft
    assert arrivals[-1] >= 0.3 + 4 / 20  # then one every 50 ms


# --- engine faults ----------------------------------------------------------------------


def test_engine_refusal_is_relayed_and_journals_no_tokens(
    client: httpx.Client, agent: Process
) -> None:
    _fault(agent, fault="engine_refuse")
    rid, token = _receipt(client, agent)

    response = _post(agent, CHAT, token, chat_body(stream=True))

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    record = _record(client, agent, rid)
    assert (record["input_tokens"], record["output_tokens"], record["requests"]) == (0, 0, 1)
    assert _post(agent, CHAT, _receipt(client, agent)[1], chat_body()).status_code == 200


def test_engine_cut_mid_stream_journals_the_tokens_relayed(
    client: httpx.Client, agent: Process
) -> None:
    _fault(agent, fault="engine_cut", after_tokens=3)
    rid, token = _receipt(client, agent)
    received = b""

    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{agent.url}{CHAT}",
            json=chat_body(max_tokens=10, stream=True),
            headers={RECEIPT_HEADER: token},
        ) as response,
    ):
        for chunk in response.iter_raw():
            received += chunk

    events = sse_events(received)
    assert [e["choices"][0]["delta"].get("content") for e in events] == [
        "",
        " tok0",
        " tok1",
        " tok2",
    ]
    assert "[DONE]" not in events
    record = _record(client, agent, rid)
    assert (record["input_tokens"], record["output_tokens"]) == (CHAT_PROMPT_TOKENS, 3)


def test_engine_cut_before_a_whole_answer_is_a_502_with_no_tokens(
    client: httpx.Client, agent: Process
) -> None:
    _fault(agent, fault="engine_cut")
    rid, token = _receipt(client, agent)

    response = _post(agent, CHAT, token, chat_body())

    assert (response.status_code, response.json()) == (502, {"error": "engine_disconnected"})
    record = _record(client, agent, rid)
    assert (record["input_tokens"], record["output_tokens"]) == (0, 0)


def test_engine_misreport_is_journaled_but_never_above_the_receipt(
    client: httpx.Client, agent: Process
) -> None:
    _fault(agent, fault="engine_misreport", factor=3, count=2)
    within_rid, within = _receipt(client, agent)
    beyond_rid, beyond = _receipt(client, agent, max_input_tokens=40, max_output_tokens=10)

    answer = _post(agent, CHAT, within, chat_body(max_tokens=4)).json()
    streamed = sse_events(_post(agent, CHAT, beyond, chat_body(max_tokens=4, stream=True)).content)

    assert answer["usage"] == {"prompt_tokens": 45, "completion_tokens": 12, "total_tokens": 57}
    assert streamed[-2]["usage"] == {
        "prompt_tokens": 45,
        "completion_tokens": 12,
        "total_tokens": 57,
    }
    within_record = _record(client, agent, within_rid)
    beyond_record = _record(client, agent, beyond_rid)
    assert (within_record["input_tokens"], within_record["output_tokens"]) == (45, 12)
    assert (beyond_record["input_tokens"], beyond_record["output_tokens"]) == (40, 10)


def test_engine_stall_then_the_client_leaves_journals_no_tokens(
    client: httpx.Client, agent: Process
) -> None:
    _fault(agent, fault="engine_stall", delay_ms=20_000)
    rid, token = _receipt(client, agent)

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{agent.url}{CHAT}",
            json=chat_body(stream=True),
            headers={RECEIPT_HEADER: token},
            timeout=httpx.Timeout(5, read=0.5),
        )

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = receipt_records(all_records(client, agent.url, _public_key(client, agent)))
        if rid in found:
            break
        time.sleep(0.1)
    assert (found[rid]["input_tokens"], found[rid]["output_tokens"]) == (0, 0)


def test_a_client_leaving_mid_stream_journals_what_it_was_sent(
    tmp_path: Path, launcher: Launcher
) -> None:
    flags = _flags()
    flags[flags.index("--engine-tokens-per-second") + 1] = "20"
    agent = launcher.agent(tmp_path / "leaving.sqlite3", *flags)
    with httpx.Client(headers=AUTH, timeout=10) as client:
        rid, token = _receipt(client, agent)
        contents = 0
        with httpx.stream(
            "POST",
            f"{agent.url}{CHAT}",
            json=chat_body(max_tokens=200, stream=True),
            headers={RECEIPT_HEADER: token},
        ) as response:
            for line in response.iter_lines():
                contents += '"content":" tok' in line
                if contents == 3:
                    break
        deadline = time.monotonic() + 5
        found: dict[str, dict[str, Any]] = {}
        while rid not in found and time.monotonic() < deadline:
            time.sleep(0.1)
            found = receipt_records(all_records(client, agent.url, _public_key(client, agent)))
    # At 20 tokens/s the agent notices within a token or two of the client leaving.
    assert 3 <= found[rid]["output_tokens"] <= 6
    assert found[rid]["input_tokens"] == CHAT_PROMPT_TOKENS


def test_the_engine_answers_loopback_clients_directly(client: httpx.Client, agent: Process) -> None:
    response = httpx.post(
        f"{agent.url}/engine/v1/chat/completions", json=chat_body(max_tokens=2), timeout=5
    )
    assert response.json()["usage"] == {
        "prompt_tokens": 15,
        "completion_tokens": 2,
        "total_tokens": 17,
    }
    invalid = httpx.post(f"{agent.url}/engine/v1/completions", json={"max_tokens": 2}, timeout=5)
    assert invalid.status_code == 400
    assert invalid.json()["error"]["param"] == "prompt"


def test_the_truth_counts_receipt_records(client: httpx.Client, agent: Process) -> None:
    key = _public_key(client, agent)
    records = all_records(client, agent.url, key)
    truth = client.get(f"{agent.url}/v1/_sim/truth").json()
    receipted = list(receipt_records(records).values())
    assert truth["receipts"] == {
        "records": len(receipted),
        "input_tokens": sum(r["input_tokens"] for r in receipted),
        "output_tokens": sum(r["output_tokens"] for r in receipted),
    }
    assert truth["record_count"] == truth["head_seq"] >= len(records)


# --- a real engine over HTTP (--engine-url) ---------------------------------------------


@pytest.fixture(scope="module")
def upstream(module_launcher: Launcher) -> Process:
    """An OpenAI-compatible server in its own process: a fleet node's engine."""
    return module_launcher.fleet(
        *("--nodes", "1", "--engine-ttft-ms", "0", "--engine-tokens-per-second", "0")
    )


@pytest.fixture(scope="module")
def relaying_agent(module_launcher: Launcher, upstream: Process) -> Process:
    journal = module_launcher.directory / "relaying.sqlite3"
    return module_launcher.agent(journal, *_flags("--engine-url", f"{upstream.url}/n/0/engine"))


def _upstream_fault(upstream: Process, **payload: Any) -> None:
    response = httpx.post(f"{upstream.url}/_admin/faults", json={"nodes": [0], **payload})
    assert response.status_code == 200, response.text


def test_engine_url_streams_are_relayed_and_journaled(
    client: httpx.Client, relaying_agent: Process
) -> None:
    rid, token = _receipt(client, relaying_agent)

    response = _post(relaying_agent, CHAT, token, chat_body(max_tokens=6, stream=True))

    events = sse_events(response.content)
    contents = [e["choices"][0]["delta"]["content"] for e in events[:-1] if e["choices"]]
    assert contents == ["", *(f" tok{i}" for i in range(6))]
    assert events[-2]["usage"] == {"prompt_tokens": 15, "completion_tokens": 6, "total_tokens": 21}
    record = _record(client, relaying_agent, rid)
    assert (record["input_tokens"], record["output_tokens"]) == (15, 6)


def test_engine_url_faults_reach_the_journal(
    client: httpx.Client, relaying_agent: Process, upstream: Process
) -> None:
    _upstream_fault(upstream, fault="engine_cut", after_tokens=4)
    cut_rid, cut = _receipt(client, relaying_agent)
    with pytest.raises(httpx.RemoteProtocolError):
        _post(relaying_agent, CHAT, cut, chat_body(max_tokens=9, stream=True))
    _upstream_fault(upstream, fault="engine_cut")
    whole_rid, whole = _receipt(client, relaying_agent)
    whole_cut = _post(relaying_agent, COMPLETIONS, whole, {"prompt": "a b"})
    _upstream_fault(upstream, fault="engine_refuse")
    refused_rid, refused = _receipt(client, relaying_agent)
    refusal = _post(relaying_agent, CHAT, refused, chat_body())

    assert (whole_cut.status_code, whole_cut.json()) == (502, {"error": "engine_disconnected"})
    assert refusal.status_code == 503
    records = receipt_records(
        all_records(client, relaying_agent.url, _public_key(client, relaying_agent))
    )
    assert (records[cut_rid]["input_tokens"], records[cut_rid]["output_tokens"]) == (15, 4)
    assert (records[whole_rid]["input_tokens"], records[whole_rid]["output_tokens"]) == (0, 0)
    assert (records[refused_rid]["input_tokens"], records[refused_rid]["output_tokens"]) == (0, 0)


def test_an_unreachable_engine_is_a_502_and_a_record_with_no_tokens(
    tmp_path: Path, launcher: Launcher
) -> None:
    closed_port = free_port()
    agent = launcher.agent(
        tmp_path / "unreachable.sqlite3", *_flags("--engine-url", f"http://127.0.0.1:{closed_port}")
    )
    with httpx.Client(headers=AUTH, timeout=10) as client:
        rid, token = _receipt(client, agent)
        response = _post(agent, CHAT, token, chat_body())
        assert (response.status_code, response.json()) == (502, {"error": "engine_unavailable"})
        record = _record(client, agent, rid)
    assert (record["input_tokens"], record["output_tokens"], record["requests"]) == (0, 0, 1)


def test_concurrent_requests_with_one_receipt_are_served_once(
    client: httpx.Client, agent: Process
) -> None:
    rid, token = _receipt(client, agent)

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as session:
            responses = await asyncio.gather(
                *(
                    session.post(
                        f"{agent.url}{CHAT}",
                        json=chat_body(max_tokens=2),
                        headers={RECEIPT_HEADER: token},
                    )
                    for _ in range(8)
                )
            )
        return sorted(response.status_code for response in responses)

    assert asyncio.run(send_all()) == [200] + [409] * 7
    assert _record(client, agent, rid)["output_tokens"] == 2


def test_a_stalled_engine_answers_whole_after_the_stall(agent: Process) -> None:
    _fault(agent, fault="engine_stall", delay_ms=400)
    began = time.monotonic()

    response = httpx.post(
        f"{agent.url}/engine/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=5
    )

    assert time.monotonic() - began >= 0.4
    assert response.json()["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }


def test_an_under_report_is_journaled_as_reported(client: httpx.Client, agent: Process) -> None:
    _fault(agent, fault="engine_misreport", factor="0.5")
    rid, token = _receipt(client, agent)

    events = sse_events(_post(agent, CHAT, token, chat_body(max_tokens=5, stream=True)).content)

    assert events[-2]["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    record = _record(client, agent, rid)
    assert (record["input_tokens"], record["output_tokens"]) == (7, 2)


@pytest.mark.parametrize(
    "payload",
    [
        {"fault": "engine_misreport", "factor": "many"},
        {"fault": "engine_misreport", "factor": -1},
        {"fault": "engine_misreport", "factor": "NaN"},
        {"fault": "engine_misreport", "factor": True},
        {"fault": "engine_cut", "after_tokens": -1},
        {"fault": "engine_stall", "delay_ms": "long"},
    ],
)
def test_bad_engine_faults_are_refused(agent: Process, payload: dict[str, Any]) -> None:
    response = httpx.post(f"{agent.url}/_admin/faults", json=payload, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_fault"
