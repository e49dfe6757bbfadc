"""The agent adapter against hostile agents: real sockets, a real (local) HTTP server.

Each test starts a raw asyncio HTTP server on loopback that misbehaves in one way (a
byte every 2 s, a 200 MB body, a 400 MB gzip bomb) and checks that ``AgentHttp`` gives
up within its deadline or its size cap, with bounded memory (tracemalloc peak). The
address rules (issue 13, SSRF) are checked the same way: the server counts connections,
so "refused" means "never connected".
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from capacity.agent_client import (
    MAX_BODY_BYTES,
    MESSAGE_NOT_PUBLIC,
    AgentHttp,
    AgentProtocolError,
    AgentUnreachable,
    AgentUrlRefused,
    check_agent_url,
    is_public_address,
    normalize_agent_url,
)
from capacity.checks import agent_urls_public_only
from capacity.metering.polling import poll_node
from tests.capacity.metering.conftest import bare_target

MiB = 1024 * 1024
Handler = Callable[[asyncio.StreamWriter, "Served"], Awaitable[None]]


@dataclass
class Served:
    """What the local server saw and did."""

    connections: int = 0
    bytes_sent: int = 0
    requests: list[bytes] = field(default_factory=list)


async def _serve(handler: Handler, served: Served) -> asyncio.Server:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.connections += 1
        served.requests.append(await reader.readuntil(b"\r\n\r\n"))
        try:
            await handler(writer, served)
        except (ConnectionError, OSError):
            pass  # the client gave up: what the tests want
        finally:
            writer.close()

    return await asyncio.start_server(on_connection, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]


async def _send(writer: asyncio.StreamWriter, served: Served, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    served.bytes_sent += len(data)


def _run(
    handler: Handler, call: Callable[[str], Awaitable[object]], *, limit_s: float = 30.0
) -> tuple[object, Served, float]:
    """Serve ``handler``, run ``call(base_url)``; (its result or exception, served, seconds)."""
    served = Served()

    async def main() -> tuple[object, float]:
        server = await _serve(handler, served)
        started = time.monotonic()
        try:
            result: object = await asyncio.wait_for(
                call(f"http://127.0.0.1:{_port(server)}"), limit_s
            )
        except Exception as error:  # the outcome under test
            result = error
        elapsed = time.monotonic() - started
        server.close()
        return result, elapsed

    result, elapsed = asyncio.run(main())
    return result, served, elapsed


def _get(**options: object) -> Callable[[str], Awaitable[object]]:
    async def call(base_url: str) -> object:
        async with AgentHttp(max_connections=1, **options) as http:  # type: ignore[arg-type]
            return await http.get(f"{base_url}/v1/health", token="t")

    return call


# -- time: a total deadline ------------------------------------------------------------------


async def _trickle(writer: asyncio.StreamWriter, served: Served) -> None:
    """A 200 whose 1000-byte body comes one byte every 2 s (each read is "in time")."""
    await _send(writer, served, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        await _send(writer, served, b" ")
        await asyncio.sleep(2)


def test_a_trickling_agent_fails_at_the_request_deadline():
    result, served, elapsed = _run(_trickle, _get(request_deadline_s=5.0), limit_s=20)

    assert isinstance(result, AgentUnreachable)
    assert str(result) == "no complete answer within 5 s"
    assert 5.0 <= elapsed < 6.5
    # It kept sending in time for every 5 s read timeout: only the deadline stops it.
    assert served.bytes_sent > len(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") + 1


def test_a_poll_has_a_total_deadline_over_its_requests():

    async def call(base_url: str) -> object:
        target = bare_target(base_url)
        async with AgentHttp(max_connections=1) as http:
            return await poll_node(
                http, target, polled_at=datetime(2026, 1, 5, tzinfo=UTC), deadline_s=3.0
            )

    outcome, _, elapsed = _run(_trickle, call, limit_s=20)

    assert outcome.error == "poll not finished within 3 s"  # type: ignore[attr-defined]
    assert outcome.pages == []  # type: ignore[attr-defined]
    assert 3.0 <= elapsed < 4.5


def test_a_stored_url_with_a_query_and_fragment_polls_the_agent_paths():
    async def call(base_url: str) -> object:
        async with AgentHttp(max_connections=1) as http:
            target = bare_target(f"{base_url}/internal/admin/config?x=#")
            return await poll_node(http, target, polled_at=datetime(2026, 1, 5, tzinfo=UTC))

    outcome, served, _ = _run(_answer(b"{}"), call)

    # The first page carries the workloads digest the platform holds (here that of no
    # workloads: sha256 of "[]"), docs/workloads.md "Cheap polling".
    no_workloads = hashlib.sha256(b"[]").hexdigest()
    assert served.requests[0].startswith(
        b"GET /internal/admin/config/v1/usage?after=0&limit=1000&workloads="
        + no_workloads.encode()
        + b" HTTP/1.1\r\n"
    )
    assert (
        outcome.integrity_problem == "usage page: signature does not verify with the enrolled key"
    )  # type: ignore[attr-defined]


# -- size: capped while reading, compressed and inflated ----------------------------------


def _peak_bytes(call: Callable[[], tuple[object, Served, float]]) -> tuple[object, Served, int]:
    tracemalloc.start()
    try:
        result, served, _ = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, served, peak


async def _huge_chunked_body(writer: asyncio.StreamWriter, served: Served) -> None:
    """200 MB, chunked (no Content-Length to refuse up front)."""
    await _send(writer, served, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
    for _ in range(200 * 1024 * 1024 // (64 * 1024)):
        await _send(writer, served, chunk)
    await _send(writer, served, b"0\r\n\r\n")


def test_a_200_mb_body_is_refused_after_about_4_mib_with_bounded_memory():
    result, served, peak = _peak_bytes(lambda: _run(_huge_chunked_body, _get()))

    assert peak < 16 * MiB
    assert isinstance(result, AgentProtocolError)
    assert str(result) == f"body too large: more than {MAX_BODY_BYTES} bytes"
    # What the server got out before the client hung up: the cap plus socket buffers.
    assert served.bytes_sent < MAX_BODY_BYTES + 16 * MiB


def test_a_declared_200_mb_body_is_refused_before_reading_it():
    async def declared(writer: asyncio.StreamWriter, served: Served) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 209715200\r\n\r\n" + b"x" * 1024)
        await writer.drain()
        await asyncio.sleep(5)

    result, _, elapsed = _run(declared, _get())

    assert isinstance(result, AgentProtocolError)
    assert str(result) == f"body too large: more than {MAX_BODY_BYTES} bytes"
    assert elapsed < 2


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """400 MB of zeros, gzipped: about 400 KB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [compressor.compress(zeros) for _ in range(400)]
    return b"".join(parts) + compressor.flush()


def test_a_400_mb_gzip_bomb_is_refused_with_bounded_memory(gzip_bomb):
    assert len(gzip_bomb) < 500 * 1024  # the attack: small on the wire

    async def bomb(writer: asyncio.StreamWriter, served: Served) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(gzip_bomb)}"
        writer.write(head.encode() + b"\r\n\r\n" + gzip_bomb)
        await writer.drain()

    result, _, peak = _peak_bytes(lambda: _run(bomb, _get()))

    assert peak < 16 * MiB
    assert isinstance(result, AgentProtocolError)
    assert str(result) == f"body too large: inflates to more than {MAX_BODY_BYTES} bytes"


def _answer(body: bytes, *headers: str) -> Handler:
    async def handler(writer: asyncio.StreamWriter, served: Served) -> None:
        head = "\r\n".join(
            ("HTTP/1.1 200 OK", f"Content-Length: {len(body)}", "X-Agent-Signature: s", *headers)
        )
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()

    return handler


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes)],
)
def test_a_well_behaved_compressed_answer_is_read_exactly(encoding, encode):
    body = b'{"gpus": []}' * 1000

    result, served, _ = _run(_answer(encode(body), f"Content-Encoding: {encoding}"), _get())

    assert (result.body, result.signature) == (body, "s")  # type: ignore[attr-defined]
    assert b"accept-encoding: gzip, deflate\r\n" in served.requests[0].lower()


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        (["Content-Encoding: br"], b"x", "unsupported Content-Encoding 'br'"),
        (["Content-Encoding: gzip"], b"not gzip at all", "compressed body is corrupt"),
        (
            ["Content-Encoding: gzip"],
            gzip.compress(b"x" * 1000)[:20],
            "compressed body is truncated",
        ),
    ],
    ids=["brotli", "corrupt", "truncated"],
)
def test_undecodable_bodies_are_protocol_errors(headers, body, message):
    result, _, _ = _run(_answer(body, *headers), _get())

    assert isinstance(result, AgentProtocolError)
    assert str(result) == message


# -- address: public only, checked at enrollment and at connect time ---------------------------


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        (
            "http://127.0.0.1:8372/internal/admin/config?x=#",
            "http://127.0.0.1:8372/internal/admin/config",
        ),
        (
            "HTTPS://user:secret@Agent.Example.COM:8443/base/?q=1#frag",
            "https://agent.example.com:8443/base",
        ),
        ("http://[2001:DB8::1]/", "http://[2001:db8::1]"),
    ],
)
def test_agent_urls_lose_userinfo_query_and_fragment(url, normalized):
    assert normalize_agent_url(url) == normalized


@pytest.mark.parametrize("url", ["ftp://agent.example.com", "http://", "http://h:99999"])
def test_agent_urls_that_are_not_http_with_a_host_are_refused(url):
    with pytest.raises(AgentUrlRefused, match="agent URL must be an http"):
        normalize_agent_url(url)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared address space (CGNAT)
        ("0.0.0.0", False),  # noqa: S104
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 around 10.0.0.1
        ("not an address", False),
    ],
)
def test_public_addresses(address, public):
    assert is_public_address(address) is public


def test_production_rules_refuse_internal_agent_urls_at_enrollment_time():
    with pytest.raises(AgentUrlRefused) as refused:
        check_agent_url("http://127.0.0.1:8372/internal/admin/config?x=#", allow_private=False)
    assert str(refused.value) == MESSAGE_NOT_PUBLIC
    # A name resolving to loopback, and one that does not resolve, read the same.
    for url in ("http://localhost:8372", "http://no-such-host.invalid"):
        with pytest.raises(AgentUrlRefused, match=MESSAGE_NOT_PUBLIC):
            check_agent_url(url, allow_private=False)
    assert check_agent_url("http://8.8.8.8:8372/a/", allow_private=False) == "http://8.8.8.8:8372/a"
    assert (
        check_agent_url("http://127.0.0.1:8372/a?x=#", allow_private=True)
        == "http://127.0.0.1:8372/a"
    )


def test_a_name_resolving_to_loopback_is_refused_at_connect_time(monkeypatch):
    """The name passed the enrollment check (public then), now resolves to 127.0.0.1 (DNS
    rebinding): the poll is refused without connecting, and says nothing of the address."""
    real_getaddrinfo = socket.getaddrinfo
    answers = {"agent.example.com": "93.184.216.34"}

    def fake_getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real_getaddrinfo(answers.get(host, host), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert check_agent_url("http://agent.example.com", allow_private=False) == (
        "http://agent.example.com"
    )
    answers["agent.example.com"] = "127.0.0.1"

    async def call(base_url: str) -> object:
        port = base_url.rsplit(":", 1)[1]
        async with AgentHttp(max_connections=1, allow_private=False) as http:
            for url in (f"http://agent.example.com:{port}", f"http://localhost:{port}", base_url):
                with pytest.raises(AgentUrlRefused) as refused:
                    await http.get(f"{url}/v1/health", token="t")
                assert str(refused.value) == MESSAGE_NOT_PUBLIC
        # The development setting keeps loopback (the simulator): the same name connects.
        async with AgentHttp(max_connections=1, allow_private=True) as http:
            return await http.get(f"http://agent.example.com:{port}/v1/health", token="t")

    result, served, _ = _run(_answer(b"{}"), call)

    assert result.body == b"{}"  # type: ignore[attr-defined]
    assert served.connections == 1  # only the development-rules request connected
    assert b"host: agent.example.com:" in served.requests[0].lower()


def test_check_deploy_warns_when_agent_urls_may_be_private(settings):
    settings.AGENT_ALLOW_PRIVATE_URLS = True
    assert [message.id for message in agent_urls_public_only(None)] == ["capacity.W001"]
    settings.AGENT_ALLOW_PRIVATE_URLS = False
    assert agent_urls_public_only(None) == []
