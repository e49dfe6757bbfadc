"""Inference engines behind the agent: the simulator's deterministic one, or a real one.

The agent relays receipted requests to an engine through one small interface,
``Engine.open(endpoint, body) -> EngineAnswer``: a status, a content type and the body's
bytes as they come. ``SimulatedEngine`` (here) runs in-process, so a fleet of thousands
of nodes serves inference without a socket per hop; ``engine_http`` holds the adapter
for a real OpenAI-compatible server (vLLM at ``--engine-url``) and puts an engine's
answers on HTTP (the relay, and ``/engine/v1/...`` on the agent and the fleet).

The simulator is deterministic, as docs/gateway.md "The simulator's engine" says:

- ``prompt_tokens`` = words of the prompt text (``str.split``) + 4 per chat message; a
  completions prompt of token ids counts one per id;
- ``completion_tokens`` = ``max_completion_tokens`` or ``max_tokens`` (default 16); the
  text is ``" tok0 tok1 ..."``, one token per chunk when streaming, and the answer always
  ends with ``finish_reason = "length"``;
- the first token comes ``ttft_ms`` after the request, then one every
  ``1 / tokens_per_second`` (0: as fast as possible); a non-streaming answer comes whole
  when its last token would have;
- ``usage`` is in every non-streaming answer; when streaming, a final chunk with
  ``usage`` and empty ``choices`` follows if ``stream_options.include_usage``, and with
  ``stream_options.continuous_usage_stats`` too every chunk carries the usage so far, as
  vLLM does;
- faults (``faults.EngineFaults``): refuse (503), stall (no byte at all for a while),
  cut (close after N tokens) and misreport (every usage times a factor).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Protocol

from capacity.agent.faults import EngineFaults, EngineRequestFaults

ENDPOINTS = ("chat/completions", "completions")
ENDPOINT_PATTERN = "|".join(ENDPOINTS)  # for aiohttp routes
DEFAULT_MAX_TOKENS = 16
# Largest max_tokens the simulator generates (a receipt allows at most 32768).
MAX_SIMULATED_TOKENS = 131_072
TOKENS_PER_MESSAGE = 4
SSE_CONTENT_TYPE = "text/event-stream"
_DONE = b"data: [DONE]\n\n"


class EngineUnavailable(RuntimeError):
    """The engine could not be reached: nothing was sent, nothing was served."""


class EngineDisconnected(RuntimeError):
    """The engine closed the connection before its answer was complete."""


async def _no_close() -> None:
    return None


@dataclass
class EngineAnswer:
    """An engine's answer as it arrives: status and content type now, body bytes later.

    ``chunks`` raises ``EngineDisconnected`` if the engine stops mid-answer; ``aclose``
    frees the connection whether or not the body was read to its end.
    """

    status: int
    content_type: str
    chunks: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]] = _no_close

    @property
    def is_stream(self) -> bool:
        return self.content_type.startswith(SSE_CONTENT_TYPE)


class Engine(Protocol):
    async def open(self, endpoint: str, body: bytes) -> EngineAnswer:
        """Send ``body`` to ``/v1/<endpoint>`` and return the answer as it starts.

        Raises ``EngineUnavailable`` when the engine cannot be reached and
        ``EngineDisconnected`` when it hangs up before answering.
        """


@dataclass(frozen=True)
class EngineSettings:
    """The simulator's speed."""

    # Time to first token, milliseconds.
    ttft_ms: int = 20
    # Tokens per second after the first; 0 sends them as fast as possible.
    tokens_per_second: int = 100


class EngineRequestError(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SimulatedRequest:
    endpoint: str
    model: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _message_words(content: object) -> int:
    if isinstance(content, list):
        return sum(_words(part.get("text")) for part in content if isinstance(part, dict))
    return _words(content)


def _prompt_tokens(endpoint: str, request: dict[str, Any]) -> int:
    if endpoint == "chat/completions":
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise EngineRequestError("messages must be a non-empty list", "messages")
        if not all(isinstance(message, dict) for message in messages):
            raise EngineRequestError("every message must be an object", "messages")
        words = sum(_message_words(message.get("content")) for message in messages)
        return words + TOKENS_PER_MESSAGE * len(messages)
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return _words(prompt)
    if isinstance(prompt, list):
        if all(isinstance(item, str) for item in prompt):
            return sum(_words(item) for item in prompt)
        if all(isinstance(item, int) for item in prompt):
            return len(prompt)
        if all(isinstance(item, list) for item in prompt):
            return sum(len(item) for item in prompt)
    raise EngineRequestError("prompt must be a string, strings or token ids", "prompt")


def parse_simulated_request(endpoint: str, body: bytes) -> SimulatedRequest:
    """What the simulator needs from an OpenAI request body; other fields are ignored."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EngineRequestError("body is not JSON") from error
    if not isinstance(request, dict):
        raise EngineRequestError("body must be a JSON object")
    max_tokens = request.get("max_completion_tokens") if endpoint == "chat/completions" else None
    if max_tokens is None:
        max_tokens = request.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= MAX_SIMULATED_TOKENS
    ):
        raise EngineRequestError(
            f"max_tokens must be an integer in [1, {MAX_SIMULATED_TOKENS}]", "max_tokens"
        )
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise EngineRequestError("stream must be a boolean", "stream")
    options = request.get("stream_options") or {}
    if not isinstance(options, dict):
        raise EngineRequestError("stream_options must be an object", "stream_options")
    include_usage = options.get("include_usage") is True
    model = request.get("model")
    return SimulatedRequest(
        endpoint=endpoint,
        model=model if isinstance(model, str) else "simulated",
        prompt_tokens=_prompt_tokens(endpoint, request),
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=include_usage and options.get("continuous_usage_stats") is True,
    )


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def error_body(status: int, message: str, *, kind: str, param: str | None = None) -> bytes:
    """An OpenAI-shaped error body."""
    return _dumps({"error": {"message": message, "type": kind, "param": param, "code": status}})


def _whole_answer(body: bytes) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        yield body

    return chunks()


def token_text(index: int) -> str:
    """The simulator's ``index``-th token (0-based)."""
    return f" tok{index}"


@dataclass
class SimulatedEngine:
    """The deterministic engine of one simulated node (its faults are its own)."""

    settings: EngineSettings = field(default_factory=EngineSettings)
    faults: EngineFaults = field(default_factory=EngineFaults)

    async def open(self, endpoint: str, body: bytes) -> EngineAnswer:
        faults = self.faults.take()
        if faults.stall_ms is not None:
            await asyncio.sleep(faults.stall_ms / 1000)
        if faults.refuse:
            message = "the engine refused the request (simulated overload)"
            body_bytes = error_body(503, message, kind="server_error")
            return EngineAnswer(503, "application/json", _whole_answer(body_bytes))
        try:
            request = parse_simulated_request(endpoint, body)
        except EngineRequestError as error:
            error_bytes = error_body(
                400, str(error), kind="invalid_request_error", param=error.param
            )
            return EngineAnswer(400, "application/json", _whole_answer(error_bytes))
        generation = _Generation(request, self.settings, faults)
        if request.stream:
            return EngineAnswer(200, SSE_CONTENT_TYPE, generation.stream())
        return EngineAnswer(200, "application/json", generation.whole())


class _Generation:
    """One simulated answer: its ids, timing and usage."""

    def __init__(
        self, request: SimulatedRequest, settings: EngineSettings, faults: EngineRequestFaults
    ) -> None:
        self.request = request
        self.faults = faults
        chat = request.endpoint == "chat/completions"
        self.chat = chat
        self.ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.object = "chat.completion" if chat else "text_completion"
        self.created = int(time.time())
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.first_token_at = loop.time() + settings.ttft_ms / 1000
        self.seconds_per_token = (
            1 / settings.tokens_per_second if settings.tokens_per_second else 0.0
        )

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt_tokens = self.request.prompt_tokens
        factor = self.faults.misreport_factor
        if factor is not None:
            prompt_tokens = _scaled(prompt_tokens, factor)
            completion_tokens = _scaled(completion_tokens, factor)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def _until_token(self, index: int) -> None:
        delay = self.first_token_at + index * self.seconds_per_token - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    @functools.cached_property
    def _chunk_head(self) -> bytes:
        """``data: {"id":…,"object":…,"created":…,"model":…,`` shared by every chunk."""
        head = {
            "id": self.ident,
            "object": f"{self.object}.chunk" if self.chat else self.object,
            "created": self.created,
            "model": self.request.model,
        }
        return b"data: " + _dumps(head)[:-1] + b","

    def _chunk(self, choice: dict[str, object] | None, completion_tokens: int) -> bytes:
        """One SSE event; assembled from pieces (one per token: keep it cheap)."""
        choices = b'"choices":[]' if choice is None else b'"choices":[' + _dumps(choice) + b"]"
        if self.request.continuous_usage or choice is None:
            usage = b',"usage":' + _dumps(self.usage(completion_tokens))
            return self._chunk_head + choices + usage + b"}\n\n"
        return self._chunk_head + choices + b"}\n\n"

    def _token_choice(self, index: int) -> dict[str, object]:
        finish = "length" if index == self.request.max_tokens - 1 else None
        if self.chat:
            return {"index": 0, "delta": {"content": token_text(index)}, "finish_reason": finish}
        return {"index": 0, "text": token_text(index), "logprobs": None, "finish_reason": finish}

    async def stream(self) -> AsyncIterator[bytes]:
        cut_after = self.faults.cut_after_tokens
        await self._until_token(0)
        if self.chat:
            role = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            yield self._chunk(role, 0)
        for index in range(self.request.max_tokens):
            if cut_after is not None and index >= cut_after:
                raise EngineDisconnected(f"simulated cut after {cut_after} tokens")
            await self._until_token(index)
            yield self._chunk(self._token_choice(index), index + 1)
        if cut_after is not None:
            raise EngineDisconnected(f"simulated cut after {cut_after} tokens")
        if self.request.include_usage:
            yield self._chunk(None, self.request.max_tokens)
        yield _DONE

    async def whole(self) -> AsyncIterator[bytes]:
        count = self.request.max_tokens
        await self._until_token(count - 1)
        if self.faults.cut_after_tokens is not None:
            raise EngineDisconnected("simulated cut before the answer")
        text = "".join(token_text(index) for index in range(count))
        if self.chat:
            choice: dict[str, object] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        yield _dumps(
            {
                "id": self.ident,
                "object": self.object,
                "created": self.created,
                "model": self.request.model,
                "choices": [choice],
                "usage": self.usage(count),
            }
        )


def _scaled(tokens: int, factor: Decimal) -> int:
    return int((tokens * factor).to_integral_value(rounding=ROUND_FLOOR))
