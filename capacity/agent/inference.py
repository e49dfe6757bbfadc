"""Receipted inference (agent protocol v1.1): check the receipt, relay, journal the tokens.

``POST /v1/inference/chat/completions`` and ``/v1/inference/completions`` serve only
requests that carry a gateway receipt (``X-Hashgrid-Receipt``, ``receipts.py``) that

- the platform signed (``--platform-key``, or enrollment's ``platform_public_key``),
- names this agent (``agent`` claim = the agent's public key, base64 of the raw bytes),
- was issued within ``RECEIPT_MAX_AGE_S`` of now (either side: clocks drift),
- has a ``rid`` never served before (claimed on disk before the engine sees the body,
  so neither a retry nor a restart can replay it).

Anything else is 401 ``{"error": "invalid_receipt"}`` (409 ``{"error":
"receipt_replayed"}`` for a used ``rid``) and reaches no engine. The body goes to the
engine unchanged except ``stream_options`` (``include_usage`` and
``continuous_usage_stats`` forced on when streaming, so the usage so far is known at
every chunk) and the output bound: a ``max_tokens`` / ``max_completion_tokens`` above the
receipt's ``max_output_tokens`` is lowered to it (one that is not a number is set to it),
and a request with neither gets ``max_tokens`` = ``max_output_tokens``, so no engine can
generate past what the receipt lets anyone bill. The engine's status and bytes are
relayed as they come.

When the request ends — finished, cut by the engine, or abandoned by the client — the
agent journals exactly one record for the receipt (``receipt_record_fields``), with the
tokens actually relayed: the last usage the engine reported in what was relayed, else
(an engine that reports none) one output token per content chunk relayed.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from capacity.agent.engine import Engine, EngineDisconnected, EngineUnavailable
from capacity.agent.engine_http import write_answer
from capacity.agent.journal import Journal
from capacity.agent.protocol import time_from_unix, usage_fields
from capacity.agent.receipts import RECEIPT_HEADER, Receipt, ReceiptError, parse_receipt
from capacity.agent.recorder import unix_ms_now

# A receipt is honoured this long after (or, for clock drift, before) its ``iat``.
RECEIPT_MAX_AGE_S = 300
# Longest window a usage record may cover (protocol v1).
MAX_RECORD_SECONDS = 60
# Largest request body relayed (the gateway refuses bigger ones first).
MAX_BODY_BYTES = 1024 * 1024


class ReceiptRefused(Exception):
    """The request carries no usable receipt; ``status`` and ``code`` are the answer."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code


def invalid_receipt(reason: str) -> ReceiptRefused:
    return ReceiptRefused(401, "invalid_receipt", reason)


class ReceiptLedger(Protocol):
    def claim(self, *, rid: str, iat: int, now_s: int) -> bool:
        """Record ``rid`` as served; False when it was served before (a replay)."""


class MemoryReceiptLedger:
    """Rids served, in memory, forgotten once their receipts are too old to be honoured.

    For the fleet simulator (and tests): a restarted fleet without ``--state-dir`` is a
    new journal epoch anyway; ``on_claim`` lets it persist claims when it has one.
    """

    def __init__(self, on_claim: Callable[[str, int], None] | None = None) -> None:
        self._seen: set[str] = set()
        self._order: deque[tuple[int, str]] = deque()
        self._on_claim = on_claim

    def claim(self, *, rid: str, iat: int, now_s: int) -> bool:
        while self._order and self._order[0][0] < now_s - 2 * RECEIPT_MAX_AGE_S:
            self._seen.discard(self._order.popleft()[1])
        if rid in self._seen:
            return False
        self.remember(rid, iat)
        if self._on_claim is not None:
            self._on_claim(rid, iat)
        return True

    def remember(self, rid: str, iat: int) -> None:
        self._seen.add(rid)
        self._order.append((iat, rid))


class JournalReceiptLedger:
    """Rids served, in the journal's SQLite file: a restart cannot be used to replay."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def claim(self, *, rid: str, iat: int, now_s: int) -> bool:
        forget_before = now_s - 2 * RECEIPT_MAX_AGE_S
        return self.journal.claim_receipt(rid=rid, iat=iat, forget_before=forget_before)


def check_receipt(
    token: str,
    *,
    platform_key: Ed25519PublicKey | None,
    agent_public_key: str,
    now_s: int,
) -> Receipt:
    """The receipt in ``token`` if it is the platform's, for this agent and fresh."""
    if not token:
        raise invalid_receipt("no receipt")
    if platform_key is None:
        raise invalid_receipt("this agent has no platform key to check receipts with")
    try:
        receipt = parse_receipt(token, platform_key)
    except ReceiptError as error:
        raise invalid_receipt(str(error)) from error
    if receipt.agent != agent_public_key:
        raise invalid_receipt("receipt is for another agent")
    if abs(now_s - receipt.iat) > RECEIPT_MAX_AGE_S:
        raise invalid_receipt("receipt is too old (or from the future)")
    return receipt


@dataclass(frozen=True)
class ServedRequest:
    """What one receipted request delivered, for its journal record."""

    receipt: Receipt
    token: str
    started_unix_ms: int
    ended_unix_ms: int
    input_tokens: int
    output_tokens: int


def receipt_record_fields(served: ServedRequest, *, gpu_uuid: str) -> dict[str, object]:
    """The journal record of one receipted request (docs/gateway.md, point 6).

    Tokens are clamped to the receipt's bounds (``max_input_tokens``,
    ``max_output_tokens``): an engine that reports more than the gateway allowed (a
    misreport, or a real engine ignoring ``max_tokens``) cannot put more on the record
    than metering would accept, so the record stays billable up to what was agreed.
    Times are whole seconds, widened outwards (start rounded down, end up, at least one
    second) and at most ``MAX_RECORD_SECONDS`` long, ending at the request's end.
    """
    receipt = served.receipt
    end_s = math.ceil(served.ended_unix_ms / 1000)
    start_s = max(served.started_unix_ms // 1000, end_s - MAX_RECORD_SECONDS)
    start_s = min(start_s, end_s - 1)
    fields = usage_fields(
        gpu_uuid=gpu_uuid,
        window_start=time_from_unix(start_s),
        window_end=time_from_unix(end_s),
        workload_kind="inference",
        workload_ref=receipt.rid,
        busy_ms=0,
        energy_mj=0,
        input_tokens=min(served.input_tokens, receipt.max_input_tokens),
        output_tokens=min(served.output_tokens, receipt.max_output_tokens),
        requests=1,
    )
    fields["workload"] = {"kind": "inference", "ref": receipt.rid, "receipt": served.token}
    return fields


def record_tokens(fields: Mapping[str, object]) -> tuple[int, int]:
    """``(input_tokens, output_tokens)`` of a record's fields."""
    input_tokens, output_tokens = fields["input_tokens"], fields["output_tokens"]
    if not isinstance(input_tokens, int) or not isinstance(output_tokens, int):
        raise TypeError("a record's tokens are integers")
    return input_tokens, output_tokens


def _usage_pair(usage: object) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if isinstance(prompt, bool) or isinstance(completion, bool):
        return None
    return max(prompt, 0), max(completion, 0)


def _has_content(choices: object) -> bool:
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            return True
    return False


class UsageMeter:
    """Reads the usage out of what was relayed: SSE events or one whole JSON answer.

    Streams are read cheaply, as most of a stream is tokens: only the last event that
    carries a ``usage`` object is kept (raw) and parsed once at the end; events are
    parsed one by one only while none has carried one, to count content chunks for an
    engine that reports no usage.
    """

    # A "usage" key with an object value (OpenAI sends "usage":null on other chunks);
    # such bytes cannot occur inside a JSON string, where quotes are escaped.
    _USAGE_MARKERS = (b'"usage":{', b'"usage": {')

    def __init__(self) -> None:
        self._usage: tuple[int, int] | None = None
        self._last_usage_event: bytes | None = None
        self.content_chunks = 0
        self._partial = b""

    def _observe(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        usage = _usage_pair(event.get("usage"))
        if usage is not None:
            self._usage = usage
        if _has_content(event.get("choices")):
            self.content_chunks += 1

    def feed_stream(self, data: bytes) -> None:
        """SSE bytes as relayed; an event counts once its ``data:`` line is complete."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            if any(marker in payload for marker in self._USAGE_MARKERS):
                self._last_usage_event = payload
            elif self._last_usage_event is None:
                self._parse(payload)

    def _parse(self, payload: bytes) -> None:
        try:
            self._observe(json.loads(payload))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return

    def feed_whole(self, body: bytes) -> None:
        self._parse(body)

    @property
    def usage(self) -> tuple[int, int] | None:
        """``(prompt, completion)`` tokens the engine last reported, if it did."""
        if self._last_usage_event is not None:
            event, self._last_usage_event = self._last_usage_event, None
            self._parse(event)
        return self._usage

    @property
    def input_tokens(self) -> int:
        usage = self.usage
        return 0 if usage is None else usage[0]

    @property
    def output_tokens(self) -> int:
        usage = self.usage
        return self.content_chunks if usage is None else usage[1]


def engine_body(request: dict[str, Any], receipt: Receipt) -> bytes:
    """The body sent to the engine (see the module docstring for the two changes)."""
    forwarded = dict(request)
    if forwarded.get("stream") is True:
        options = forwarded.get("stream_options")
        forwarded["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
            "continuous_usage_stats": True,
        }
    bound = receipt.max_output_tokens
    bounded = False
    for name in ("max_tokens", "max_completion_tokens"):
        value = forwarded.get(name)
        if value is None:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            forwarded[name] = min(value, bound)
        else:
            # Engines coerce strings ("100000") to numbers: nothing above the receipt.
            forwarded[name] = bound
        bounded = True
    if not bounded:
        # A real engine without a bound generates until its context is full, past what
        # the receipt lets anyone bill; the gateway adds one, but the agent relies on
        # no one for it.
        forwarded["max_tokens"] = bound
    return json.dumps(forwarded, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _error(status: int, code: str) -> web.Response:
    return web.json_response({"error": code}, status=status)


@dataclass
class InferenceNode:
    """What a node needs to serve receipted inference (an agent, or one fleet node)."""

    agent_public_key: str
    platform_key: Ed25519PublicKey | None
    ledger: ReceiptLedger
    engine: Engine | None
    # Called exactly once per claimed receipt, when its request ends.
    journal: Callable[[ServedRequest], None]


async def serve_inference(
    request: web.Request, node: InferenceNode, endpoint: str
) -> web.StreamResponse:
    """The whole v1.1 inference route: receipt, relay, journal."""
    now_ms = unix_ms_now()
    token = request.headers.get(RECEIPT_HEADER, "")
    try:
        receipt = check_receipt(
            token,
            platform_key=node.platform_key,
            agent_public_key=node.agent_public_key,
            now_s=now_ms // 1000,
        )
    except ReceiptRefused as refusal:
        return _error(refusal.status, refusal.code)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _error(413, "body_too_large")
    try:
        payload = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
    if not isinstance(payload, dict):
        return _error(400, "invalid_body")
    if node.engine is None:
        return _error(503, "no_engine")
    if not node.ledger.claim(rid=receipt.rid, iat=receipt.iat, now_s=now_ms // 1000):
        return _error(409, "receipt_replayed")
    meter = UsageMeter()
    try:
        return await _relay(request, node.engine, endpoint, engine_body(payload, receipt), meter)
    finally:
        node.journal(
            ServedRequest(
                receipt=receipt,
                token=token,
                started_unix_ms=now_ms,
                ended_unix_ms=unix_ms_now(),
                input_tokens=meter.input_tokens,
                output_tokens=meter.output_tokens,
            )
        )


async def _relay(
    request: web.Request, engine: Engine, endpoint: str, body: bytes, meter: UsageMeter
) -> web.StreamResponse:
    try:
        answer = await engine.open(endpoint, body)
    except EngineUnavailable:
        return _error(502, "engine_unavailable")
    except EngineDisconnected:
        return _error(502, "engine_disconnected")
    return await write_answer(
        request, answer, observer=meter, whole_cut=lambda _: _error(502, "engine_disconnected")
    )
