"""The one module in metering that speaks HTTP to node agents (httpx, async).

One ``AgentHttp`` per poll batch: a single ``httpx.AsyncClient`` whose keep-alive pool is
shared by every node of the batch (the fleet simulator, or many agents behind one
site gateway, reuse connections), with explicit connect/read/write/pool timeouts. httpx
errors never leave this module: they become ``AgentUnreachable`` (network, timeout) or
``AgentHttpError`` (an answer other than 200), which the poller records as a failed poll.
Bodies come back as the exact bytes received, because the signature covers those bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import httpx

from capacity.agent.protocol import SIGNATURE_HEADER

# Seconds. Agents answer from local state, so anything slower than this is unhealthy.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 10.0
# A usage page is at most 1000 records of ~450 bytes; refuse anything absurdly larger.
MAX_BODY_BYTES = 4 * 1024 * 1024


class AgentError(Exception):
    """A poll failed for a reason worth recording on the node (never a programming error)."""


class AgentUnreachable(AgentError):
    """No answer: connection refused or reset, DNS, or a timeout."""


class AgentHttpError(AgentError):
    """The agent answered, with a status other than 200."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SignedBody:
    """A 200 answer: the exact body bytes and the signature header (may be missing)."""

    body: bytes
    signature: str


class AgentHttp:
    """Async HTTP to agents; use as ``async with AgentHttp(...) as http``."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # ``transport`` lets tests answer in-process (httpx.MockTransport); None = network.
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                connect=connect_timeout_s,
                read=read_timeout_s,
                write=WRITE_TIMEOUT_S,
                pool=POOL_TIMEOUT_S,
            ),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
            headers={"User-Agent": "hashgrid-metering/1", "Accept": "application/json"},
        )

    async def __aenter__(self) -> AgentHttp:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def get(
        self, url: str, *, token: str, params: dict[str, int] | None = None
    ) -> SignedBody:
        """GET ``url`` with the node's bearer token; the body bytes and signature of a 200."""
        try:
            response = await self._client.get(
                url, params=params, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.TimeoutException as error:
            raise AgentUnreachable(f"timed out ({type(error).__name__})") from error
        except httpx.TransportError as error:
            raise AgentUnreachable(f"no connection ({type(error).__name__})") from error
        except httpx.InvalidURL as error:
            raise AgentUnreachable(f"invalid agent URL: {error}") from error
        if response.status_code != 200:
            raise AgentHttpError(response.status_code, f"HTTP {response.status_code}")
        body = response.content
        if len(body) > MAX_BODY_BYTES:
            raise AgentHttpError(response.status_code, f"body of {len(body)} bytes is too large")
        return SignedBody(body=body, signature=response.headers.get(SIGNATURE_HEADER, ""))
