"""What the agent journals for a stream: the last usage relayed, else one token per chunk."""

from __future__ import annotations

import json

from capacity.agent.inference import UsageMeter


def _event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _token(text: str, usage: object = None, *, with_usage_key: bool = False) -> bytes:
    chunk: dict[str, object] = {"choices": [{"index": 0, "delta": {"content": text}}]}
    if usage is not None or with_usage_key:
        chunk["usage"] = usage
    return _event(chunk)


def _feed_in_pieces(meter: UsageMeter, stream: bytes, size: int) -> None:
    for start in range(0, len(stream), size):
        meter.feed_stream(stream[start : start + size])


def test_without_usage_every_content_chunk_is_a_token_wherever_the_bytes_split() -> None:
    stream = _event({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    stream += b"".join(_token(f" w{i}") for i in range(5)) + b"data: [DONE]\n\n"
    for size in (1, 7, 64, len(stream)):
        meter = UsageMeter()
        _feed_in_pieces(meter, stream, size)
        assert (meter.input_tokens, meter.output_tokens) == (0, 5)


def test_openai_style_null_usage_then_the_final_usage() -> None:
    stream = b"".join(_token(f" w{i}", with_usage_key=True) for i in range(3))
    stream += _event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    meter = UsageMeter()

    _feed_in_pieces(meter, stream, 5)

    assert (meter.input_tokens, meter.output_tokens) == (9, 3)


def test_the_last_usage_relayed_counts_not_a_later_partial_event() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    stream = _token(" a", {**usage, "completion_tokens": 1}) + _token(" b", usage)
    meter = UsageMeter()
    meter.feed_stream(stream)
    assert (meter.input_tokens, meter.output_tokens) == (4, 2)

    # Half an event (the connection dropped mid-line) was never whole: it is not counted.
    meter.feed_stream(_token(" c", {**usage, "completion_tokens": 3})[:-10])

    assert (meter.input_tokens, meter.output_tokens) == (4, 2)


def test_a_content_string_mentioning_usage_is_not_mistaken_for_it() -> None:
    meter = UsageMeter()
    meter.feed_stream(_token('"usage":{"prompt_tokens":99}') + _token(" x"))
    assert (meter.input_tokens, meter.output_tokens) == (0, 2)


def test_a_whole_answer_reports_its_usage() -> None:
    meter = UsageMeter()
    meter.feed_whole(json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 7}}).encode())
    assert (meter.input_tokens, meter.output_tokens) == (3, 7)
