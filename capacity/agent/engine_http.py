"""Engines over HTTP: the adapter to a real one, and answers written to a client.

``HttpEngine`` is the one adapter to an OpenAI-compatible server (vLLM at
``--engine-url``): explicit timeouts, aiohttp errors mapped to ``EngineUnavailable`` and
``EngineDisconnected``. ``write_answer`` sends any engine's answer to an aiohttp client
as it comes (the agent's relay, and ``serve_engine`` for the simulator's engine on
loopback): a cut stream cuts the client's connection too, so it never looks complete.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

import aiohttp
from aiohttp import web

from capacity.agent.engine import Engine, EngineAnswer, EngineDisconnected, EngineUnavailable


class HttpEngine:
    """Adapter for a real OpenAI-compatible server (vLLM): ``POST {base_url}/v1/<endpoint>``.

    Connecting has 5 s; once connected, a stream may pause up to 10 minutes between
    bytes (long prompts on a busy engine), and has no overall limit (the gateway keeps
    its own).
    """

    TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=600)

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def open(self, endpoint: str, body: bytes) -> EngineAnswer:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.TIMEOUT, auto_decompress=True)
        try:
            response = await self._session.post(
                f"{self.base_url}/v1/{endpoint}",
                data=body,
                headers={"Content-Type": "application/json"},
            )
        except aiohttp.ClientConnectorError as error:
            raise EngineUnavailable(f"engine at {self.base_url}: {error}") from error
        except (aiohttp.ClientError, TimeoutError) as error:
            # Connected, sent, then no answer: the engine may have worked on it.
            raise EngineDisconnected(f"engine at {self.base_url}: {error}") from error

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as error:
                raise EngineDisconnected(str(error)) from error

        async def aclose() -> None:
            response.close()

        content_type = response.headers.get("Content-Type", "application/json")
        return EngineAnswer(response.status, content_type, chunks(), aclose)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def abort_connection(request: web.Request) -> None:
    """Drop the client's connection at once: a cut stream, not a short complete one."""
    if request.transport is not None:
        request.transport.abort()


class AnswerObserver(Protocol):
    """Sees what was relayed to the client (``inference.UsageMeter``)."""

    def feed_stream(self, data: bytes) -> None: ...

    def feed_whole(self, body: bytes) -> None: ...


def _cut_connection(request: web.Request) -> web.Response:
    abort_connection(request)
    return web.Response(status=502)


async def write_answer(
    request: web.Request,
    answer: EngineAnswer,
    *,
    observer: AnswerObserver | None = None,
    whole_cut: Callable[[web.Request], web.Response] = _cut_connection,
) -> web.StreamResponse:
    """Send ``answer`` to the client: a stream chunk by chunk as it comes, anything else
    whole. A cut stream cuts the client's connection too (a short stream must not look
    complete); a cut whole answer is ``whole_cut``'s (by default: cut as well). A client
    that leaves ends the relay; ``observer`` has then seen exactly what it was sent.
    """
    try:
        if not answer.is_stream:
            try:
                body = b"".join([chunk async for chunk in answer.chunks])
            except EngineDisconnected:
                return whole_cut(request)
            if observer is not None and answer.status == 200:
                observer.feed_whole(body)
            return web.Response(
                body=body, status=answer.status, headers={"Content-Type": answer.content_type}
            )
        response = web.StreamResponse(
            status=answer.status,
            headers={"Content-Type": answer.content_type, "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        try:
            async for chunk in answer.chunks:
                await response.write(chunk)
                if observer is not None:
                    observer.feed_stream(chunk)
            await response.write_eof()
        except EngineDisconnected:
            abort_connection(request)
        except ConnectionError:
            pass  # the client left
        return response
    finally:
        await answer.aclose()


async def serve_engine(request: web.Request, engine: Engine, endpoint: str) -> web.StreamResponse:
    """An engine on HTTP, bytes as they come; a cut engine cuts the connection."""
    return await write_answer(request, await engine.open(endpoint, await request.read()))
