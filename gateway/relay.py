"""One attempt on one node: send the request to its agent, relay the answer to the buyer.

``relay_attempt`` returns how the attempt ended (``Outcome``): whether the node is to
blame (the circuit breaker), whether any byte reached the buyer (no failover after
that), and the tokens relayed (the budget's settlement and the request log). Non-200
answers that blame the node (401/403/408/409/429 from the agent, any 5xx) are not
relayed, so the caller can try the next node; other 4xx are the buyer's and relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import orjson

from gateway import errors
from gateway.responses import Headers, Receive, Send, send_json
from gateway.streaming import EventRelay
from gateway.upstream import AgentClient, AgentResponse, UpstreamFailed, UpstreamTimeout

# Attempt statuses written to the log besides the agent's own (docs/gateway.md).
STATUS_BUYER_GONE = 499
STATUS_UPSTREAM_FAILED = 502
STATUS_UPSTREAM_TIMEOUT = 504
# Agent answers that say the node, not the request, is at fault: fail over.
_NODE_FAULT_STATUSES = frozenset({401, 403, 408, 409, 429})


@dataclass(slots=True)
class Outcome:
    """How one attempt ended, for the breaker, the log and the budget."""

    status: int
    node_ok: bool | None
    input_tokens: int = 0
    output_tokens: int = 0
    first_byte_sent: bool = False
    time_to_first_token_ms: int | None = None


async def relay_attempt(
    *,
    agents: AgentClient,
    send: Send,
    receive: Receive,
    cors: Headers,
    agent_url: str,
    kind: str,
    forwarded: bytes,
    receipt: str,
    rid: str,
    streaming: bool,
    include_usage: bool,
    continuous_usage: bool,
    started: float,
) -> Outcome:
    try:
        response = await agents.post(
            agent_url=agent_url, kind=kind, body=forwarded, receipt=receipt
        )
    except UpstreamTimeout:
        return Outcome(status=STATUS_UPSTREAM_TIMEOUT, node_ok=False)
    except UpstreamFailed:
        return Outcome(status=STATUS_UPSTREAM_FAILED, node_ok=False)
    try:
        if response.status != 200:
            return await _relay_refusal(send, cors, response, rid)
        if streaming:
            return await _relay_stream(
                send, receive, cors, response, rid, include_usage, continuous_usage, started
            )
        return await _relay_answer(send, cors, response, rid, started)
    finally:
        response.close()


async def _read_whole(response: AgentResponse) -> bytes | Outcome:
    """The answer's body, or the failed attempt's outcome if it could not be read."""
    try:
        return await response.read()
    except UpstreamTimeout:
        return Outcome(status=STATUS_UPSTREAM_TIMEOUT, node_ok=False)
    except UpstreamFailed:
        return Outcome(status=STATUS_UPSTREAM_FAILED, node_ok=False)


async def _relay_refusal(send: Send, cors: Headers, response: AgentResponse, rid: str) -> Outcome:
    """A non-200 answer: the node's fault (fail over) or the request's (relay it)."""
    if response.status >= 500 or response.status in _NODE_FAULT_STATUSES:
        return Outcome(status=response.status, node_ok=False)
    body = await _read_whole(response)
    if isinstance(body, Outcome):
        return body
    await send_json(send, response.status, errors.openai_shaped(body), cors, rid)
    return Outcome(status=response.status, node_ok=True, first_byte_sent=True)


async def _relay_answer(
    send: Send,
    cors: Headers,
    response: AgentResponse,
    rid: str,
    started: float,
) -> Outcome:
    body = await _read_whole(response)
    if isinstance(body, Outcome):
        return body
    try:
        usage = orjson.loads(body).get("usage") or {}
        input_tokens = int(usage["prompt_tokens"])
        output_tokens = int(usage["completion_tokens"])
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        # An answer without usage cannot be settled or witnessed: the node is at fault.
        return Outcome(status=STATUS_UPSTREAM_FAILED, node_ok=False)
    ttft_ms = int((time.monotonic() - started) * 1000)
    await send_json(send, 200, body, cors, rid)
    return Outcome(
        status=200,
        node_ok=True,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        first_byte_sent=True,
        time_to_first_token_ms=ttft_ms,
    )


async def _relay_stream(
    send: Send,
    receive: Receive,
    cors: Headers,
    response: AgentResponse,
    rid: str,
    include_usage: bool,
    continuous_usage: bool,
    started: float,
) -> Outcome:
    relay = EventRelay(include_usage=include_usage, continuous_usage=continuous_usage)
    outcome = Outcome(status=200, node_ok=True)
    buyer_gone = asyncio.Event()

    async def watch_buyer() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                buyer_gone.set()
                response.close()
                return

    watcher = asyncio.create_task(watch_buyer())
    try:
        async for chunk in response.chunks():
            out = relay.feed(chunk)
            if not relay.events:
                continue
            if not outcome.first_byte_sent:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"),
                            (b"x-request-id", rid.encode()),
                            *cors,
                        ],
                    }
                )
                outcome.first_byte_sent = True
                outcome.time_to_first_token_ms = int((time.monotonic() - started) * 1000)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            relay.mark_relayed()
    except UpstreamFailed as error:
        if buyer_gone.is_set():
            outcome.status, outcome.node_ok = STATUS_BUYER_GONE, None
        else:
            timeout = isinstance(error, UpstreamTimeout)
            outcome.status = STATUS_UPSTREAM_TIMEOUT if timeout else STATUS_UPSTREAM_FAILED
            outcome.node_ok = False
            if outcome.first_byte_sent:
                await _end_stream_with_error(send, timeout=timeout)
    except OSError:
        # The server could not write to the buyer: gone.
        outcome.status, outcome.node_ok = STATUS_BUYER_GONE, None
    else:
        if buyer_gone.is_set():
            outcome.status, outcome.node_ok = STATUS_BUYER_GONE, None
        elif not outcome.first_byte_sent:
            # The agent ended the stream without a single event.
            outcome.status, outcome.node_ok = STATUS_UPSTREAM_FAILED, False
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()
    outcome.input_tokens = relay.relayed.prompt_tokens
    outcome.output_tokens = relay.relayed.completion_tokens
    return outcome


async def _end_stream_with_error(send: Send, *, timeout: bool) -> None:
    error = errors.upstream_timeout() if timeout else None
    body = (
        error.body
        if error is not None
        else errors.error_body(
            message="The node serving this request stopped mid-stream.",
            type="server_error",
            code="upstream_failed",
        )
    )
    with contextlib.suppress(OSError):
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + body + b"\n\n",
                "more_body": False,
            }
        )
