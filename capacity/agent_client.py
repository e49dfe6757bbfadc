"""The one adapter that speaks HTTP to node agents: the only module importing httpx (and
aiohttp) for them.

Everything an agent says is untrusted: bodies are size-checked and returned as the exact
bytes received (the signature covers those bytes), parsed defensively by the caller or
here. httpx's and aiohttp's exceptions never leave this module; every failure is one of
ours, worth recording on the node or showing an operator (never a programming error):

- ``AgentUnreachable``: no answer (connection refused or reset, DNS, a timeout, a bad URL);
- ``AgentHttpError``: an answer with a status other than 200 (the status is kept);
- ``AgentProtocolError``: a 200 that is not what the protocol says (too large, not JSON,
  missing fields, a signature that does not match).

Two entry points, each with its own explicit timeouts:

- synchronous one-off calls, ``fetch_info`` (``GET /v1/info``, checked against the key
  it announces) and ``fleet_set_poll_token`` (the fleet simulator's loopback admin
  endpoint), for enrolling and seeding the demo;
- ``AgentHttp``, the async client metering polls with. One per poll batch: a single
  ``httpx.AsyncClient`` whose keep-alive pool is shared by every node of the batch (the
  fleet simulator, or many agents behind one site gateway, reuse connections).

Why the async client's transport is aiohttp's: httpx's own (httpcore over anyio) spends
about 1-2 ms of CPU per request in pool bookkeeping (every request scans every pooled
connection, each check going through anyio's typed attributes, and a failed ``import
sniffio`` on every lock), against ~0.2 ms for aiohttp's pool and C parser; at 10,000
polls a minute that difference is most of a core. ``_AiohttpTransport`` keeps httpx's
interface and exceptions (and lets tests pass ``httpx.MockTransport`` instead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import httpx
import yarl

from capacity.agent.protocol import SIGNATURE_HEADER, hash_token, verify_signature

# -- errors -------------------------------------------------------------------------------


class AgentError(Exception):
    """The agent could not be used; the message is fit for an operator and the node's record."""


class AgentUnreachable(AgentError):
    """No answer: connection refused or reset, DNS, a timeout, or a URL that cannot be used."""


class AgentHttpError(AgentError):
    """The agent answered, with a status other than 200."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AgentProtocolError(AgentError):
    """The agent answered 200, but not as the protocol says (too large, bad JSON, bad
    signature…)."""


def _bearer(poll_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {poll_token}"}


# -- synchronous one-off calls --------------------------------------------------------------

# Agents are on partners' networks: fail fast rather than hold a worker.
SYNC_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
# No legitimate /v1/info body is anywhere near this.
MAX_INFO_BYTES = 256 * 1024


@dataclass(frozen=True)
class AgentInfo:
    """``GET /v1/info``, parsed. ``gpus`` keeps the wire form for ``node_enroll``."""

    node_id: str
    agent_version: str
    boot_id: str
    journal_epoch: str
    public_key: str
    gpus: list[dict[str, object]]


def fetch_info(agent_url: str, *, poll_token: str, client: httpx.Client | None = None) -> AgentInfo:
    """Fetch and check ``{agent_url}/v1/info`` (signed with the key it announces)."""
    url = agent_url.rstrip("/") + "/v1/info"
    try:
        if client is not None:
            response = client.get(url, headers=_bearer(poll_token), timeout=SYNC_TIMEOUT)
        else:
            response = httpx.get(url, headers=_bearer(poll_token), timeout=SYNC_TIMEOUT)
    except httpx.HTTPError as error:
        raise AgentUnreachable(f"{url}: {error.__class__.__name__}") from error
    if response.status_code != 200:
        raise AgentHttpError(response.status_code, f"{url}: HTTP {response.status_code}")
    body = response.content
    if len(body) > MAX_INFO_BYTES:
        raise AgentProtocolError(f"{url}: response too large")
    try:
        data = json.loads(body)
    except ValueError as error:
        raise AgentProtocolError(f"{url}: not JSON") from error
    if not isinstance(data, dict):
        raise AgentProtocolError(f"{url}: not a JSON object")
    fields = ("node_id", "agent_version", "boot_id", "journal_epoch", "public_key")
    if not all(isinstance(data.get(name), str) for name in fields) or not isinstance(
        data.get("gpus"), list
    ):
        raise AgentProtocolError(f"{url}: missing or mistyped fields")
    if not verify_signature(data["public_key"], body, response.headers.get(SIGNATURE_HEADER, "")):
        raise AgentProtocolError(f"{url}: signature does not match the announced key")
    return AgentInfo(
        node_id=data["node_id"],
        agent_version=data["agent_version"],
        boot_id=data["boot_id"],
        journal_epoch=data["journal_epoch"],
        public_key=data["public_key"],
        gpus=[gpu for gpu in data["gpus"] if isinstance(gpu, dict)],
    )


def fleet_set_poll_token(
    agent_url: str, *, poll_token: str, client: httpx.Client | None = None
) -> None:
    """Tell the fleet simulator (loopback admin endpoint) which token node ``agent_url`` accepts.

    Only the token's SHA-256 travels, as a real agent would keep it. For the demo and
    tests; real agents learn their token by enrolling.
    """
    url = agent_url.rstrip("/") + "/_admin/token"
    payload = {"poll_token_sha256": hash_token(poll_token)}
    try:
        if client is not None:
            response = client.post(url, json=payload, timeout=SYNC_TIMEOUT)
        else:
            response = httpx.post(url, json=payload, timeout=SYNC_TIMEOUT)
    except httpx.HTTPError as error:
        raise AgentUnreachable(f"{url}: {error.__class__.__name__}") from error
    if response.status_code != 200:
        raise AgentHttpError(response.status_code, f"{url}: HTTP {response.status_code}")


# -- the async client metering polls with ---------------------------------------------------

# Seconds. Agents answer from local state, so anything slower than this is unhealthy.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 10.0
# Idle keep-alive connections are closed after this many seconds.
KEEPALIVE_EXPIRY_S = 30.0
# A usage page is at most 1000 records of ~450 bytes; refuse anything absurdly larger.
MAX_BODY_BYTES = 4 * 1024 * 1024


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
            response = await self._client.get(url, params=params, headers=_bearer(token))
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
            raise AgentProtocolError(f"body of {len(body)} bytes is too large")
        return SignedBody(body=body, signature=response.headers.get(SIGNATURE_HEADER, ""))
