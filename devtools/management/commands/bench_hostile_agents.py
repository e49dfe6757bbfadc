"""manage.py bench_hostile_agents [slow huge bomb]

What one hostile agent costs a polling worker (issue 13): a separate process serves, on
loopback, an agent that sends its body one byte every 2 s (``slow``), a 200 MB body
(``huge``) or a 400 MB gzip bomb of ~400 KB (``bomb``); this process polls it once with
``AgentHttp``'s defaults, as a metering batch does, and prints one line per case: the
verdict, seconds, tracemalloc peak and RSS growth.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import time
import tracemalloc
import zlib

import psutil
from django.core.management.base import BaseCommand, CommandError, CommandParser

from capacity.agent_client import AgentError, AgentHttp

CASES = ("slow", "huge", "bomb")
# The most this command waits for one poll (the old client never ended the slow case).
CAP_S = 120.0


def _serve(case: str, port: int) -> None:
    bomb = b""
    if case == "bomb":
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        bomb = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(400))
        bomb += compressor.flush()

    async def answer(writer: asyncio.StreamWriter) -> None:
        if case == "slow":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(2)
        elif case == "huge":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
            for _ in range(200 * 16):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}"
            writer.write(head.encode() + b"\r\n\r\n" + bomb)
        await writer.drain()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await answer(writer)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(on_connection, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def _poll(url: str) -> str:
    async with AgentHttp(max_connections=1, allow_private=True) as http:
        try:
            token = "bench"  # noqa: S105 (the hostile agent checks none)
            answer = await asyncio.wait_for(http.get(url, token=token), CAP_S)
        except AgentError as error:
            return f"refused: {error}"
        except TimeoutError:
            return f"still reading after {CAP_S:g} s"
        return f"accepted {len(answer.body)} bytes"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError("the hostile agent did not start")


class Command(BaseCommand):
    help = "What a slow agent, a 200 MB body and a 400 MB gzip bomb cost one poll."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("cases", nargs="*", help=f"some of {', '.join(CASES)} (default: all)")

    def handle(self, *args: object, **options: object) -> None:
        cases = options["cases"] or CASES
        assert isinstance(cases, list | tuple)
        unknown = set(cases) - set(CASES)
        if unknown:
            raise CommandError(f"unknown case(s): {', '.join(sorted(unknown))}")
        for case in cases:
            port = _free_port()
            server = multiprocessing.Process(target=_serve, args=(case, port), daemon=True)
            server.start()
            try:
                _wait_listening(port)
                process = psutil.Process()
                rss_before = process.memory_info().rss
                tracemalloc.start()
                started = time.monotonic()
                verdict = asyncio.run(_poll(f"http://127.0.0.1:{port}/v1/usage"))
                seconds = time.monotonic() - started
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                rss_growth = process.memory_info().rss - rss_before
            finally:
                server.terminate()
                server.join()
            self.stdout.write(
                f"{case}: {verdict} | {seconds:.1f} s | tracemalloc peak "
                f"{peak / 2**20:.1f} MiB | RSS growth {rss_growth / 2**20:.1f} MiB"
            )
