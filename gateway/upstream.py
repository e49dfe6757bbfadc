"""The gateway's one adapter to partner agents (agent protocol v1.1, inference).

``POST {agent_url}/v1/inference/<kind>`` with the receipt in ``X-Hashgrid-Receipt``,
through one pooled aiohttp session with explicit timeouts: ``connect_timeout_s`` to
open a connection, ``read_timeout_s`` for the answer's headers and between any two
reads of its body. aiohttp's exceptions stop here: callers see ``UpstreamTimeout`` or
``UpstreamFailed``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from capacity.agent.receipts import RECEIPT_HEADER


class UpstreamFailed(Exception):
    """The agent could not be reached, or the connection broke."""


class UpstreamTimeout(UpstreamFailed):
    """The agent did not answer (or went silent) within the read timeout."""


class AgentResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise UpstreamTimeout("the agent went silent") from error
        except aiohttp.ClientError as error:
            raise UpstreamFailed(f"the agent's answer broke: {error}") from error

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise UpstreamTimeout("the agent went silent") from error
        except aiohttp.ClientError as error:
            raise UpstreamFailed(f"the agent's stream broke: {error}") from error

    def close(self) -> None:
        self._response.close()


class AgentClient:
    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def post(self, *, agent_url: str, kind: str, body: bytes, receipt: str) -> AgentResponse:
        try:
            response = await self._session.post(
                f"{agent_url}/v1/inference/{kind}",
                data=body,
                headers={"Content-Type": "application/json", RECEIPT_HEADER: receipt},
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise UpstreamTimeout("the agent did not answer in time") from error
        except aiohttp.ClientError as error:
            raise UpstreamFailed(f"the agent is unreachable: {error}") from error
        return AgentResponse(response)

    async def close(self) -> None:
        await self._session.close()
