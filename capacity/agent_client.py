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

Agents are hostile until proven otherwise, so every request is bounded (DESIGN "Metering"):

- time: a total deadline per request (``REQUEST_DEADLINE_S``, connect to last body byte),
  not only per-read timeouts, which an agent sending a byte every few seconds resets forever;
- size: ``MAX_BODY_BYTES`` enforced while reading, on the bytes received and again on the
  bytes inflated (``_CappedBody``): a 200 MB body or a 400 MB gzip bomb is refused after
  ~4 MiB, never held whole;
- address: outside development (``AGENT_ALLOW_PRIVATE_URLS``) an agent URL must resolve to
  public addresses only. ``check_agent_url`` refuses others at enrollment; at connect time
  ``_PublicOnlyResolver`` resolves the host once, refuses the lot if any address is not
  public, and aiohttp connects to exactly the addresses it returned (TLS still verifies
  the hostname and sends it as SNI; ``Host`` is the hostname), so DNS cannot swap a
  checked public address for an internal one between the check and the connect.

Two entry points, each with its own explicit timeouts:

- synchronous one-off calls, ``fetch_info`` (``GET /v1/info``, checked against the key
  it announces) and ``fleet_set_poll_token`` (the fleet simulator's loopback admin
  endpoint), for enrolling and seeding the demo; they run ``AgentHttp`` in a private event
  loop, so they get the same bounds (never call them from a running loop);
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

import asyncio
import ipaddress
import json
import socket
import zlib
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
import httpx
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from django.conf import settings

from capacity.agent.protocol import SIGNATURE_HEADER, hash_token, verify_signature

# -- errors -------------------------------------------------------------------------------


class AgentError(Exception):
    """The agent could not be used; the message is fit for an operator and the node's record."""


class AgentUnreachable(AgentError):
    """No answer: connection refused or reset, DNS, a timeout, or a URL that cannot be used."""


class AgentUrlRefused(AgentUnreachable):
    """The agent URL may not be used: not http(s), or (outside development) its host has no
    public address. The message repeats nothing the partner did not give (no resolved
    address, no port probed), so ``last_error`` cannot map the platform's network."""


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


# -- which URLs may be used -----------------------------------------------------------------

# One message for "does not resolve" and "resolves to a non-public address": telling them
# apart would let a partner ask the platform's resolver which internal names exist.
MESSAGE_NOT_PUBLIC = "agent URL must resolve to public internet addresses only"
MESSAGE_NOT_HTTP = "agent URL must be an http(s) URL with a host"

# NAT64's well-known prefix embeds an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def private_urls_allowed() -> bool:
    """Whether agent URLs may point at loopback and private networks (the simulator in
    development and tests); off in production (``HASHGRID_AGENT_ALLOW_PRIVATE_URLS``)."""
    return bool(settings.AGENT_ALLOW_PRIVATE_URLS)


def is_public_address(address: str) -> bool:
    """Whether ``address`` (an IP literal, IPv6 zone allowed) is a public unicast address.

    Refuses private, loopback, link-local, shared (CGNAT), documentation, reserved,
    unspecified and multicast ranges, and IPv6 forms that embed such an IPv4 address
    (mapped, 6to4, Teredo, NAT64).
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    embedded: list[ipaddress.IPv4Address] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return all(
        candidate.is_global and not candidate.is_multicast and not candidate.is_reserved
        for candidate in (ip, *embedded)
    )


def normalize_agent_url(url: str) -> str:
    """``scheme://host[:port][/path]`` of ``url``, lowercased scheme and host.

    Userinfo, query and fragment are dropped: the poller appends ``/v1/usage?...`` to this
    base, and a query or fragment in it (``…/admin/config?x=#``) would swallow that suffix
    and aim the poll, bearer token included, at another path.
    """
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError as error:
        raise AgentUrlRefused(MESSAGE_NOT_HTTP) from error
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise AgentUrlRefused(MESSAGE_NOT_HTTP)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def check_agent_url(url: str, *, allow_private: bool) -> str:
    """The normalized ``url``, after checking (unless ``allow_private``) that its host
    resolves, now, to public addresses only. For enrollment; polls check again at connect
    time, since what a name resolves to can change."""
    normalized = normalize_agent_url(url)
    if allow_private:
        return normalized
    parts = urlsplit(normalized)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise AgentUrlRefused(MESSAGE_NOT_PUBLIC) from error
    if not infos or not all(is_public_address(str(info[4][0])) for info in infos):
        raise AgentUrlRefused(MESSAGE_NOT_PUBLIC)
    return normalized


class _PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, refusing a host unless every address it resolves to is public.

    aiohttp connects to the addresses a resolver returns (and keeps them in its DNS cache),
    so what is checked here is what is connected to. IP-literal hosts never reach a
    resolver: ``_AiohttpTransport`` checks those itself.
    """

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            results = await self._inner.resolve(host, port, family)
        except OSError as error:
            raise AgentUrlRefused(MESSAGE_NOT_PUBLIC) from error
        if not results or not all(is_public_address(result["host"]) for result in results):
            raise AgentUrlRefused(MESSAGE_NOT_PUBLIC)
        return results

    async def close(self) -> None:
        await self._inner.close()


# -- bodies, bounded while they are read ---------------------------------------------------

# A usage page is at most 1000 records of ~450 bytes; refuse anything absurdly larger.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Encodings we ask for (and decode, bounded); anything else an agent sends is refused.
ACCEPT_ENCODING = "gzip, deflate"
# Inflated in steps of at most this, so the peak is the cap plus one step.
_INFLATE_STEP_BYTES = 256 * 1024


class _CappedBody:
    """A body fed chunk by chunk as it arrives: at most ``max_bytes`` received and at most
    ``max_bytes`` once inflated, refused the moment either is exceeded.

    Inflating asks zlib for at most what is still allowed (plus one byte, to notice the
    excess), in steps, so a small compressed body that inflates to gigabytes costs
    ``max_bytes`` and one step.
    """

    def __init__(self, *, content_encoding: str, max_bytes: int) -> None:
        encoding = content_encoding.strip().lower()
        self._max_bytes = max_bytes
        self._received = 0
        self._size = 0
        self._parts: list[bytes] = []
        self._inflater: zlib._Decompress | None
        if encoding in ("", "identity"):
            self._inflater = None
        elif encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise AgentProtocolError(f"unsupported Content-Encoding {encoding[:32]!r}")

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_bytes:
            raise AgentProtocolError(
                f"body too large: inflates to more than {self._max_bytes} bytes"
            )
        if data:
            self._parts.append(data)

    def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._max_bytes:
            raise AgentProtocolError(f"body too large: more than {self._max_bytes} bytes")
        if self._inflater is None:
            self._keep(chunk)
            return
        pending = chunk
        try:
            while pending:
                allowed = min(self._max_bytes - self._size + 1, _INFLATE_STEP_BYTES)
                self._keep(self._inflater.decompress(pending, allowed))
                pending = self._inflater.unconsumed_tail
        except zlib.error as error:
            raise AgentProtocolError("compressed body is corrupt") from error

    def finish(self) -> bytes:
        if self._inflater is not None:
            try:
                self._keep(self._inflater.flush(self._max_bytes - self._size + 1))
            except zlib.error as error:
                raise AgentProtocolError("compressed body is corrupt") from error
            if not self._inflater.eof:
                raise AgentProtocolError("compressed body is truncated")
        return b"".join(self._parts)


# -- synchronous one-off calls --------------------------------------------------------------

# Agents are on partners' networks: fail fast rather than hold a worker.
SYNC_CONNECT_TIMEOUT_S = 2.0
SYNC_READ_TIMEOUT_S = 5.0
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


async def _one_request(
    method: str, url: str, *, token: str | None = None, json_body: object = None
) -> SignedBody:
    async with AgentHttp(
        max_connections=1,
        connect_timeout_s=SYNC_CONNECT_TIMEOUT_S,
        read_timeout_s=SYNC_READ_TIMEOUT_S,
    ) as http:
        return await http.request(method, url, token=token, json_body=json_body)


def _naming(url: str, error: AgentError) -> AgentError:
    """``error`` again, its message prefixed with the URL asked (for operators)."""
    if isinstance(error, AgentHttpError):
        return AgentHttpError(error.status, f"{url}: {error}")
    return type(error)(f"{url}: {error}")


def fetch_info(agent_url: str, *, poll_token: str) -> AgentInfo:
    """Fetch and check ``{agent_url}/v1/info`` (signed with the key it announces)."""
    url = agent_url.rstrip("/") + "/v1/info"
    try:
        answer = asyncio.run(_one_request("GET", url, token=poll_token))
    except AgentError as error:
        raise _naming(url, error) from error
    body = answer.body
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
    if not verify_signature(data["public_key"], body, answer.signature):
        raise AgentProtocolError(f"{url}: signature does not match the announced key")
    return AgentInfo(
        node_id=data["node_id"],
        agent_version=data["agent_version"],
        boot_id=data["boot_id"],
        journal_epoch=data["journal_epoch"],
        public_key=data["public_key"],
        gpus=[gpu for gpu in data["gpus"] if isinstance(gpu, dict)],
    )


def fleet_set_poll_token(agent_url: str, *, poll_token: str) -> None:
    """Tell the fleet simulator (loopback admin endpoint) which token node ``agent_url`` accepts.

    Only the token's SHA-256 travels, as a real agent would keep it. For the demo and
    tests; real agents learn their token by enrolling.
    """
    url = agent_url.rstrip("/") + "/_admin/token"
    payload = {"poll_token_sha256": hash_token(poll_token)}
    try:
        asyncio.run(_one_request("POST", url, json_body=payload))
    except AgentError as error:
        raise _naming(url, error) from error


# -- the async client metering polls with ---------------------------------------------------

# Seconds. Agents answer from local state, so anything slower than this is unhealthy.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 10.0
# Everything of one request (pool wait, connect, send, every body byte) within this; the
# per-read timeout alone restarts on every byte, so a trickling agent would never end.
REQUEST_DEADLINE_S = 15.0
# Idle keep-alive connections are closed after this many seconds.
KEEPALIVE_EXPIRY_S = 30.0


@dataclass(frozen=True)
class SignedBody:
    """A 200 answer: the exact body bytes and the signature header (may be missing)."""

    body: bytes
    signature: str


def _ip_literal(host: str) -> str | None:
    """``host`` as an IP address when it is one (brackets and IPv6 zone allowed)."""
    candidate = host.strip("[]")
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return None
    return candidate


class _AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one ``aiohttp.ClientSession`` (made on first use, in the loop).

    Bodies are read as they arrive into a ``_CappedBody`` (aiohttp's own decompression is
    off: it inflates without a bound) and handed to httpx whole and decoded; aiohttp's
    errors become httpx's, so callers see one API. With ``allow_private`` False, hosts
    are resolved by ``_PublicOnlyResolver`` and IP literals are checked here.
    """

    def __init__(
        self, *, max_connections: int, timeout: httpx.Timeout, allow_private: bool
    ) -> None:
        self._max_connections = max_connections
        self._allow_private = allow_private
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
                    limit=self._max_connections,
                    keepalive_timeout=KEEPALIVE_EXPIRY_S,
                    resolver=None if self._allow_private else _PublicOnlyResolver(),
                ),
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._allow_private:
            literal = _ip_literal(request.url.host)
            if literal is not None and not is_public_address(literal):
                raise AgentUrlRefused(MESSAGE_NOT_PUBLIC)
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
                status, raw_headers = response.status, response.raw_headers
                declared = response.content_length
                if declared is not None and declared > MAX_BODY_BYTES:
                    raise AgentProtocolError(f"body too large: more than {MAX_BODY_BYTES} bytes")
                body = _CappedBody(
                    content_encoding=response.headers.get("Content-Encoding", ""),
                    max_bytes=MAX_BODY_BYTES,
                )
                async for chunk in response.content.iter_any():
                    body.feed(chunk)
                content = body.finish()
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
        return httpx.Response(status, headers=kept, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class AgentHttp:
    """Async HTTP to agents; use as ``async with AgentHttp(...) as http``.

    ``allow_private`` None follows the ``AGENT_ALLOW_PRIVATE_URLS`` setting.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        allow_private: bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        timeout = httpx.Timeout(
            connect=connect_timeout_s,
            read=read_timeout_s,
            write=WRITE_TIMEOUT_S,
            pool=POOL_TIMEOUT_S,
        )
        self._request_deadline_s = request_deadline_s
        if allow_private is None:
            allow_private = private_urls_allowed()
        # ``transport`` lets tests answer in-process (httpx.MockTransport); None = network.
        self._client = httpx.AsyncClient(
            transport=transport
            or _AiohttpTransport(
                max_connections=max_connections, timeout=timeout, allow_private=allow_private
            ),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            headers={
                "User-Agent": "hashgrid-metering/1",
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
            },
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
        self, url: str, *, token: str, params: dict[str, int | str] | None = None
    ) -> SignedBody:
        """GET ``url`` with the node's bearer token; the body bytes and signature of a 200."""
        return await self.request("GET", url, token=token, params=params)

    async def put_signed(
        self, url: str, *, token: str, body: bytes, signature_header: str, signature: str
    ) -> SignedBody:
        """PUT ``body`` (JSON bytes, sent exactly) signed by the platform in
        ``signature_header``; the agent's signed answer of a 200."""
        return await self.request(
            "PUT",
            url,
            token=token,
            content=body,
            headers={"Content-Type": "application/json", signature_header: signature},
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        params: dict[str, int | str] | None = None,
        json_body: object = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> SignedBody:
        """One request, done (body included) within ``request_deadline_s`` or refused."""
        try:
            async with asyncio.timeout(self._request_deadline_s):
                response = await self._client.request(
                    method,
                    url,
                    params=params,
                    headers={**(_bearer(token) if token is not None else {}), **(headers or {})},
                    json=json_body,
                    content=content,
                )
        except TimeoutError as error:
            raise AgentUnreachable(
                f"no complete answer within {self._request_deadline_s:g} s"
            ) from error
        except httpx.TimeoutException as error:
            raise AgentUnreachable(f"timed out ({type(error).__name__})") from error
        except httpx.TransportError as error:
            raise AgentUnreachable(f"no connection ({type(error).__name__})") from error
        except httpx.InvalidURL as error:
            raise AgentUnreachable(f"invalid agent URL: {error}") from error
        if response.status_code != 200:
            raise AgentHttpError(response.status_code, f"HTTP {response.status_code}")
        body = response.content
        # The network transport refused larger bodies while reading; this covers others.
        if len(body) > MAX_BODY_BYTES:
            raise AgentProtocolError(f"body too large: {len(body)} bytes")
        return SignedBody(body=body, signature=response.headers.get(SIGNATURE_HEADER, ""))
