"""The one module in metering that speaks HTTP to node agents (httpx API, aiohttp wire).

One ``AgentHttp`` per poll batch: a single ``httpx.AsyncClient`` whose keep-alive pool is
shared by every node of the batch (the fleet simulator, or many agents behind one
site gateway, reuse connections), with explicit connect/read/write/pool timeouts. httpx
errors never leave this module: they become ``AgentUnreachable`` (network, timeout) or
``AgentHttpError`` (an answer other than 200), which the poller records as a failed poll.
Bodies come back as the exact bytes received, because the signature covers those bytes.

Why the client's transport is aiohttp's: httpx's own (httpcore over anyio) spends about
1-2 ms of CPU per request in pool bookkeeping (every request scans every pooled
connection, each check going through anyio's typed attributes, and a failed ``import
sniffio`` on every lock), against ~0.2 ms for aiohttp's pool and C parser; at 10,000
polls a minute that difference is most of a core. ``_AiohttpTransport`` keeps httpx's
interface and exceptions (and lets tests pass ``httpx.MockTransport`` instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import aiohttp
import httpx
import yarl

from capacity.agent.protocol import SIGNATURE_HEADER

# Seconds. Agents answer from local state, so anything slower than this is unhealthy.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 10.0
# Idle keep-alive connections are closed after this many seconds.
KEEPALIVE_EXPIRY_S = 30.0
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


class _AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one ``aiohttp.ClientSession`` (made on first use, in the loop).

    Bodies are read whole (they are signed, so they are needed whole) and handed to
    httpx already decoded; aiohttp's errors become httpx's, so callers see one API.
    """

    def __init__(self, *, max_connections: int, timeout: httpx.Timeout) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            # ``connect`` includes waiting for a free pooled connection.
            connect=(timeout.pool or 0) + (timeout.connect or 0) or None,
            sock_connect=timeout.connect,
            sock_read=timeout.read,
        )
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, keepalive_timeout=KEEPALIVE_EXPIRY_S
                ),
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() != b"host"
        ]
        try:
            async with self._session_now().request(
                request.method,
                # Already encoded by httpx: sent exactly as built.
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=await request.aread() or None,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                status, raw_headers = response.status, response.raw_headers
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as error:
            exception = (
                httpx.ConnectTimeout
                if isinstance(error, aiohttp.ConnectionTimeoutError)
                else httpx.ConnectError
            )
            raise exception(str(error), request=request) from error
        except TimeoutError as error:  # aiohttp's read timeouts subclass it
            raise httpx.ReadTimeout(str(error) or "read timed out", request=request) from error
        except aiohttp.InvalidURL as error:
            raise httpx.UnsupportedProtocol(str(error), request=request) from error
        except aiohttp.ClientError as error:
            raise httpx.ReadError(str(error) or type(error).__name__, request=request) from error
        # The body is decoded and complete: drop the headers that described it on the wire.
        kept = [
            (name, value)
            for name, value in raw_headers
            if name.lower() not in (b"content-encoding", b"transfer-encoding", b"content-length")
        ]
        return httpx.Response(status, headers=kept, content=body, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


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
        timeout = httpx.Timeout(
            connect=connect_timeout_s,
            read=read_timeout_s,
            write=WRITE_TIMEOUT_S,
            pool=POOL_TIMEOUT_S,
        )
        # ``transport`` lets tests answer in-process (httpx.MockTransport); None = network.
        self._client = httpx.AsyncClient(
            transport=transport
            or _AiohttpTransport(max_connections=max_connections, timeout=timeout),
            timeout=timeout,
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
