"""Usage read from server-sent events, and dropped where the buyer did not ask for it."""

from __future__ import annotations

import json

from gateway.streaming import EventRelay


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(index: int, completion_tokens: int) -> bytes:
    return _event(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": f" tok{index}"}}],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": completion_tokens,
                "total_tokens": 9 + completion_tokens,
            },
        }
    )


FINAL = _event(
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
)
STREAM = _chunk(0, 1) + _chunk(1, 2) + FINAL + b"data: [DONE]\n\n"


def _events(data: bytes) -> list[bytes]:
    return [event for event in data.split(b"\n\n") if event]


def test_without_include_usage_every_usage_is_dropped_and_still_counted():
    relay = EventRelay(include_usage=False, continuous_usage=False)
    out = relay.feed(STREAM[:50]) + relay.feed(STREAM[50:])
    events = _events(out)
    assert len(events) == 3
    assert [json.loads(e[6:]) for e in events[:2]] == [
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": f" tok{i}"}}],
        }
        for i in range(2)
    ]
    assert events[2] == b"data: [DONE]"
    assert (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (9, 2)


def test_include_usage_keeps_the_final_usage_chunk_only():
    relay = EventRelay(include_usage=True, continuous_usage=False)
    events = _events(relay.feed(STREAM))
    assert len(events) == 4
    assert b"usage" not in events[0] and b"usage" not in events[1]
    assert json.loads(events[2][6:])["usage"]["completion_tokens"] == 2


def test_continuous_usage_passes_bytes_unchanged():
    relay = EventRelay(include_usage=True, continuous_usage=True)
    assert relay.feed(STREAM) == STREAM
    assert relay.usage.completion_tokens == 2


def test_usage_first_member_and_null_usage_are_stripped_cleanly():
    relay = EventRelay(include_usage=False, continuous_usage=False)
    out = relay.feed(b'data: {"usage": null, "id": "x", "choices": [{"index": 0}]}\n\n')
    assert json.loads(out[6:]) == {"id": "x", "choices": [{"index": 0}]}
    out = relay.feed(
        b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 1, '
        b'"prompt_tokens_details": {"cached_tokens": 0}}, "choices": [{"index": 0}]}\n\n'
    )
    assert json.loads(out[6:]) == {"choices": [{"index": 0}]}
    assert (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (3, 1)


def test_a_partial_event_waits_for_its_end():
    relay = EventRelay(include_usage=True, continuous_usage=True)
    first = _chunk(0, 1)
    assert relay.feed(first[:-1]) == b""
    assert relay.events == 0
    assert relay.feed(first[-1:]) == first
    assert relay.events == 1
