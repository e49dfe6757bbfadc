"""What a request may cost at most: its receipt's token bounds and their price.

``max_input_tokens`` is the UTF-8 bytes of the prompt's text plus 16 per message plus 64:
no tokenizer makes more tokens than bytes, so the engine's ``prompt_tokens`` stays within
it. The text counted is every string in the messages (content parts, names, tool calls)
and the serialized ``tools`` / ``functions`` / ``response_format`` the engine adds to the
prompt; counting more than the engine sees only widens the bound.
``max_output_tokens`` is the request's ``max_tokens`` (or ``max_completion_tokens``),
4096 when absent, never over 32768.

Money is exact integers: a spend is counted in millionths of a minor unit ("micros"),
a line's price per million tokens in ten-thousandths of a major unit ("ticks", the
4 decimals prices are stored with). One token at ``t`` ticks costs
``t x 100 minor / (10^4 x 10^6)`` = ``t / 100`` micros; a request's cost is rounded up
to the next micro, so the sum of what the store counts is never below what billing
charges.
"""

from __future__ import annotations

from decimal import Decimal

import orjson

from contracts.inference_spend import MICROS_PER_MINOR
from contracts.money import MINOR_UNITS_PER_MAJOR

INPUT_TOKENS_PER_MESSAGE = 16
INPUT_TOKENS_OVERHEAD = 64
DEFAULT_MAX_OUTPUT_TOKENS = 4096
MAX_OUTPUT_TOKENS = 32768
# Prices per million tokens are stored with 4 decimals.
TICKS_PER_MAJOR = 10_000
TOKENS_PER_PRICE = 1_000_000
# micros per (token x tick) = MINOR_UNITS_PER_MAJOR x MICROS_PER_MINOR / (TICKS x TOKENS) = 1/100.
_MICROS_DIVISOR = TICKS_PER_MAJOR * TOKENS_PER_PRICE // (MINOR_UNITS_PER_MAJOR * MICROS_PER_MINOR)
# Fields outside the messages that the engine turns into prompt tokens.
_PROMPT_FIELDS = ("tools", "functions", "response_format", "tool_choice")


class BodyError(ValueError):
    """The request body is not a valid request; ``param`` names the field."""

    def __init__(self, message: str, *, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def price_ticks(price_per_million: Decimal) -> int:
    """A price per million tokens in ticks (exact: prices have at most 4 decimals)."""
    ticks = price_per_million * TICKS_PER_MAJOR
    if ticks != ticks.to_integral_value():
        raise ValueError(f"price {price_per_million} has more than 4 decimals")
    return int(ticks)


def cost_micros(
    *, input_tokens: int, output_tokens: int, input_price_ticks: int, output_price_ticks: int
) -> int:
    """What the tokens cost in micros, rounded up (exact integer arithmetic)."""
    raw = input_tokens * input_price_ticks + output_tokens * output_price_ticks
    return -(-raw // _MICROS_DIVISOR)


def _text_bytes(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, list):
        return sum(_text_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_text_bytes(item) for item in value.values())
    return 0


def max_input_tokens_chat(body: dict[str, object]) -> int:
    messages = body["messages"]
    assert isinstance(messages, list)
    extra = sum(
        len(orjson.dumps(body[name])) for name in _PROMPT_FIELDS if body.get(name) is not None
    )
    return (
        _text_bytes(messages)
        + INPUT_TOKENS_PER_MESSAGE * len(messages)
        + extra
        + INPUT_TOKENS_OVERHEAD
    )


def max_input_tokens_completion(body: dict[str, object]) -> int:
    prompt = body["prompt"]
    if isinstance(prompt, list) and prompt and all(isinstance(item, int) for item in prompt):
        # Token ids: one token each.
        return len(prompt) + INPUT_TOKENS_PER_MESSAGE + INPUT_TOKENS_OVERHEAD
    if isinstance(prompt, list) and all(isinstance(item, list) for item in prompt):
        count = sum(len(item) for item in prompt)
        return count + INPUT_TOKENS_PER_MESSAGE * len(prompt) + INPUT_TOKENS_OVERHEAD
    pieces = 1 if isinstance(prompt, str) else len(prompt)  # type: ignore[arg-type]
    return _text_bytes(prompt) + INPUT_TOKENS_PER_MESSAGE * pieces + INPUT_TOKENS_OVERHEAD


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def max_output_tokens(body: dict[str, object]) -> int | None:
    """The request's ``max_tokens`` (validated), or None when it names none."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= MAX_OUTPUT_TOKENS:  # type: ignore[operator]
            raise BodyError(
                f"{name} must be an integer between 1 and {MAX_OUTPUT_TOKENS}", param=name
            )
        return value  # type: ignore[return-value]
    return None


def validate_chat(body: dict[str, object]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BodyError("messages must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BodyError(
                f"messages[{index}] must be an object with a role", param=f"messages[{index}]"
            )


def validate_completion(body: dict[str, object]) -> None:
    prompt = body.get("prompt")
    valid = isinstance(prompt, str) or (
        isinstance(prompt, list)
        and bool(prompt)
        and (
            all(isinstance(item, str) for item in prompt)
            or all(_is_int(item) for item in prompt)
            or all(isinstance(item, list) and all(_is_int(t) for t in item) for item in prompt)
        )
    )
    if not valid:
        raise BodyError("prompt must be a string or an array of strings", param="prompt")


def validate_common(body: dict[str, object]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BodyError("you must provide a model parameter", param="model")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise BodyError("stream must be a boolean", param="stream")
    n = body.get("n")
    if n is not None and n != 1:
        raise BodyError("only n=1 is supported", param="n")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BodyError("stream_options must be an object", param="stream_options")
