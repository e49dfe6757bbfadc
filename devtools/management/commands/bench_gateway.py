"""manage.py bench_gateway [--rate 200] [--seconds 10] [--streams 64] [--stream-tokens 256]

What the inference gateway adds to a request, measured against the same load sent
straight to a node's engine, in one run. Prints one JSON object.

1. A fleet simulator (``--nodes`` nodes, engine with no time to first token and no
   per-token wait, so the engine's own time is as small as it gets) with the platform's
   receipt key; its nodes registered online and opted in to the product; a bench buyer
   with an active contract, an inference line and a fresh key (rate limits lifted).
2. The gateway (``python -m gateway``, ``--server``, ``--workers``) on the same database.
3. Loads, each sent (a) to ``/n/<i>/engine/v1/chat/completions`` round robin and (b)
   through gateway -> agent -> engine:

   - ``fixed_rate``: short non-streaming completions (``max_tokens`` 16) at ``--rate``
     requests/s for ``--seconds``, open loop (requests start on schedule whether or not
     earlier ones finished, so queueing does not hide overhead);
   - ``streams``: ``--streams`` concurrent streams of ``--stream-tokens`` tokens, each
     worker starting its next stream when one ends, for ``--seconds``;
   - ``ramp``: closed loop through the gateway at 8, 32, 64 and 128 in flight,
     ``--ramp-seconds`` each: the gateway's throughput and where it tops out.

Per load: requests/s, p50/p99 latency and time to first token (ms); then
``added_p50_ms``, ``added_p99_ms``, ``added_ttft_p50_ms`` (gateway minus direct) and the
gateway processes' CPU from the OS (``psutil``: user + system of the server and its
workers) per request and per 1,000 relayed tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from accounts.models import ApiKey, Membership, Organization, Role, User
from capacity.models import Node, NodeStatus
from config.gateway_keys import receipt_public_key_b64
from contracts.models import (
    Contract,
    ContractLine,
    ContractState,
    InferenceProduct,
    LineApiKey,
    LineKind,
)
from devtools.gateway_process import GatewayProcess
from devtools.simulated_fleet import FleetProcess, register_fleet_nodes

PRODUCT = "llama-3.1-8b-instruct"
SEED = 4242
MESSAGES = [{"role": "user", "content": "Benchmark the gateway please"}]


@dataclass
class Sample:
    latency_ms: float
    ttft_ms: float
    tokens: int
    ok: bool


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float | None = None

    def summary(self) -> dict[str, Any]:
        good = [s for s in self.samples if s.ok]
        latencies = sorted(s.latency_ms for s in good)
        ttfts = sorted(s.ttft_ms for s in good)
        result: dict[str, Any] = {
            "requests": len(self.samples),
            "errors": len(self.samples) - len(good),
            "rps": round(len(good) / self.wall_s, 1) if self.wall_s else 0,
            "p50_ms": _percentile(latencies, 50),
            "p99_ms": _percentile(latencies, 99),
            "ttft_p50_ms": _percentile(ttfts, 50),
            "ttft_p99_ms": _percentile(ttfts, 99),
            "tokens": sum(s.tokens for s in good),
        }
        if self.cpu_s is not None and good:
            result["gateway_cpu_ms_per_request"] = round(self.cpu_s * 1000 / len(good), 3)
            tokens = result["tokens"]
            if tokens:
                result["gateway_cpu_ms_per_1000_tokens"] = round(
                    self.cpu_s * 1000 / (tokens / 1000), 3
                )
        return result


def _percentile(values: list[float], percent: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[percent - 1], 2)


class Target:
    """Where a load goes: the engines directly (round robin) or the gateway."""

    def __init__(self, urls: list[str], headers: dict[str, str]) -> None:
        self.urls = urls
        self.headers = headers
        self._next = 0

    def url(self) -> str:
        self._next += 1
        return self.urls[self._next % len(self.urls)]


async def _one(
    session: aiohttp.ClientSession, target: Target, *, stream: bool, max_tokens: int
) -> Sample:
    body: dict[str, Any] = {"model": PRODUCT, "messages": MESSAGES, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        async with session.post(target.url(), json=body, headers=target.headers) as response:
            if response.status != 200:
                await response.read()
                return Sample(0, 0, 0, ok=False)
            if not stream:
                answer = await response.json(content_type=None)
                elapsed = (time.perf_counter() - started) * 1000
                return Sample(elapsed, elapsed, answer["usage"]["completion_tokens"], ok=True)
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                if ttft is None and b'"content"' in line:
                    ttft = (time.perf_counter() - started) * 1000
                if b'"choices":[]' in line or b'"choices": []' in line:
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
        return Sample(0, 0, 0, ok=False)
    elapsed = (time.perf_counter() - started) * 1000
    return Sample(elapsed, ttft if ttft is not None else elapsed, tokens, ok=tokens > 0)


async def _fixed_rate(
    session: aiohttp.ClientSession, target: Target, *, rate: int, seconds: float
) -> LoadResult:
    result = LoadResult()
    tasks = []
    started = time.perf_counter()
    for index in range(int(rate * seconds)):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(session, target, stream=False, max_tokens=16)))
    result.samples = list(await asyncio.gather(*tasks))
    result.wall_s = time.perf_counter() - started
    return result


async def _closed_loop(
    session: aiohttp.ClientSession,
    target: Target,
    *,
    concurrency: int,
    seconds: float,
    stream: bool,
    max_tokens: int,
) -> LoadResult:
    result = LoadResult()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            result.samples.append(await _one(session, target, stream=stream, max_tokens=max_tokens))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    return result


class GatewayCpu:
    """User + system CPU seconds of the gateway's server process and its workers."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def seconds(self) -> float:
        total = 0.0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


async def _measured(
    cpu: GatewayCpu | None, load: Callable[[], Awaitable[LoadResult]]
) -> LoadResult:
    before = cpu.seconds() if cpu else 0.0
    result = await load()
    if cpu is not None:
        result.cpu_s = cpu.seconds() - before
    return result


class Command(BaseCommand):
    help = "Benchmark the inference gateway against direct engine calls (JSON)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--nodes", type=int, default=4)
        parser.add_argument("--rate", type=int, default=200)
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--streams", type=int, default=64)
        parser.add_argument("--stream-tokens", type=int, default=256)
        parser.add_argument("--ramp-seconds", type=float, default=4.0)
        parser.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--store-url", default="", help="Redis for the gateway's store")
        parser.add_argument("--fleet-port", type=int, default=9650)
        parser.add_argument("--gateway-port", type=int, default=9651)
        parser.add_argument("--skip", action="append", default=[], help="fixed_rate|streams|ramp")
        parser.add_argument(
            "--profile", type=Path, help="run one gateway process under cProfile, stats here"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with tempfile.TemporaryDirectory() as directory:
            fleet = self._start_fleet(options, Path(directory))
            try:
                key = self._bench_data(fleet, options)
                gateway = GatewayProcess(
                    port=options["gateway_port"],
                    server=options["server"],
                    workers=options["workers"],
                    env=self._gateway_env(options),
                    log_path=Path(directory) / "gateway.log",
                    profile_path=options["profile"],
                )
                with gateway:
                    assert gateway.process is not None
                    report = asyncio.run(self._run(fleet, gateway, key, options))
            finally:
                fleet.terminate()
                fleet.wait(timeout=10)
        self.stdout.write(json.dumps(report, indent=2))

    def _start_fleet(self, options: dict[str, Any], directory: Path) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "capacity.agent.fleet",
                f"--nodes={options['nodes']}",
                f"--port={options['fleet_port']}",
                f"--seed={SEED}",
                "--gpus-per-node=2",
                f"--platform-key={receipt_public_key_b64()}",
                "--engine-ttft-ms=0",
                "--engine-tokens-per-second=0",
                f"--state-dir={directory / 'fleet'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{options['fleet_port']}/_admin/fleet", timeout=1
                ):
                    return process
            except OSError:
                time.sleep(0.2)
        process.kill()
        raise RuntimeError("the fleet did not start")

    def _bench_data(self, fleet: subprocess.Popen[bytes], options: dict[str, Any]) -> str:
        partner, _ = Organization.objects.get_or_create(
            slug="gateway-bench-partner",
            defaults={"name": "Gateway bench partner", "is_partner": True, "is_buyer": False},
        )
        fleet_spec = FleetProcess(
            nodes=options["nodes"], port=options["fleet_port"], seed=SEED, gpus_per_node=2
        )
        node_ids = register_fleet_nodes(
            organization=partner, fleet=fleet_spec, site_name="Gateway bench"
        )
        Node.objects.filter(pk__in=node_ids).update(status=NodeStatus.ONLINE)
        product = InferenceProduct.objects.get(slug=PRODUCT)
        product.nodes.add(*node_ids)
        buyer, _ = Organization.objects.get_or_create(
            slug="gateway-bench-buyer",
            defaults={"name": "Gateway bench buyer", "is_buyer": True},
        )
        user, _ = User.objects.get_or_create(
            username="gateway-bench", defaults={"email": "gateway-bench@hashgrid.test"}
        )
        Membership.objects.get_or_create(
            user=user, organization=buyer, defaults={"role": Role.ADMIN}
        )
        now = timezone.now()
        contract = Contract.objects.filter(buyer=buyer, state=ContractState.ACTIVE).first()
        if contract is None:
            contract = Contract.objects.create(
                buyer=buyer,
                state=ContractState.ACTIVE,
                starts_at=now,
                term_ends_at=now + timedelta(days=365),
                activated_at=now,
            )
        line = ContractLine.objects.filter(
            contract=contract, kind=LineKind.INFERENCE, inference_product=product
        ).first() or ContractLine.objects.create(
            contract=contract,
            kind=LineKind.INFERENCE,
            inference_product=product,
            input_price_per_million_tokens=product.input_price_per_million_tokens,
            output_price_per_million_tokens=product.output_price_per_million_tokens,
            starts_at=now,
        )
        secret, prefix, key_hash = ApiKey.generate()
        api_key = ApiKey.objects.create(
            organization=buyer,
            name=f"bench {now.isoformat()}",
            prefix=prefix,
            key_hash=key_hash,
            created_by=user,
        )
        LineApiKey.objects.create(
            line=line, api_key=api_key, requests_per_minute=10**9, tokens_per_minute=2 * 10**9
        )
        return secret

    def _gateway_env(self, options: dict[str, Any]) -> dict[str, str]:
        # The same database as this command (DATABASE_URL and the settings module are
        # inherited); DEBUG off as in production.
        return {"DJANGO_DEBUG": "0", "HASHGRID_GATEWAY_STORE_URL": options["store_url"]}

    async def _run(
        self,
        fleet: subprocess.Popen[bytes],
        gateway: GatewayProcess,
        key: str,
        options: dict[str, Any],
    ) -> dict[str, Any]:
        assert gateway.process is not None
        cpu = GatewayCpu(gateway.process.pid)
        fleet_url = f"http://127.0.0.1:{options['fleet_port']}"
        direct = Target(
            [
                f"{fleet_url}/n/{index}/engine/v1/chat/completions"
                for index in range(options["nodes"])
            ],
            {},
        )
        through = Target([f"{gateway.url}/v1/chat/completions"], {"Authorization": f"Bearer {key}"})
        report: dict[str, Any] = {
            "server": options["server"],
            "gateway_workers": options["workers"],
            "store": "redis" if options["store_url"] else "memory",
            "nodes": options["nodes"],
            "cpu_count": os.cpu_count(),
            "load_average_before": round(os.getloadavg()[0], 2),
        }
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # Warm both paths (connections, the gateway's first catalog use).
            await _closed_loop(
                session, through, concurrency=8, seconds=1, stream=False, max_tokens=4
            )
            await _closed_loop(
                session, direct, concurrency=8, seconds=1, stream=False, max_tokens=4
            )
            seconds = options["seconds"]
            if "fixed_rate" not in options["skip"]:
                rate = options["rate"]
                direct_result = await _fixed_rate(session, direct, rate=rate, seconds=seconds)
                gateway_result = await _measured(
                    cpu, lambda: _fixed_rate(session, through, rate=rate, seconds=seconds)
                )
                report["fixed_rate"] = _compare(direct_result, gateway_result, rate=rate)
            if "streams" not in options["skip"]:
                streams, tokens = options["streams"], options["stream_tokens"]

                def stream_load(target: Target) -> Awaitable[LoadResult]:
                    return _closed_loop(
                        session,
                        target,
                        concurrency=streams,
                        seconds=seconds,
                        stream=True,
                        max_tokens=tokens,
                    )

                direct_result = await stream_load(direct)
                gateway_result = await _measured(cpu, lambda: stream_load(through))
                report["streams"] = _compare(direct_result, gateway_result, streams=streams)
            if "ramp" not in options["skip"]:
                levels = []
                for concurrency in (8, 32, 64, 128):
                    result = await _measured(
                        cpu,
                        lambda c=concurrency: _closed_loop(  # type: ignore[misc]
                            session,
                            through,
                            concurrency=c,
                            seconds=options["ramp_seconds"],
                            stream=False,
                            max_tokens=16,
                        ),
                    )
                    levels.append({"concurrency": concurrency, **result.summary()})
                report["ramp"] = {
                    "levels": levels,
                    "max_rps": max(level["rps"] for level in levels),
                }
        report["load_average_after"] = round(os.getloadavg()[0], 2)
        return report


def _compare(direct: LoadResult, gateway: LoadResult, **parameters: int) -> dict[str, Any]:
    d, g = direct.summary(), gateway.summary()

    def added(name: str) -> float | None:
        if d[name] is None or g[name] is None:
            return None
        return round(g[name] - d[name], 2)

    return {
        **parameters,
        "direct": d,
        "gateway": g,
        "added_p50_ms": added("p50_ms"),
        "added_p99_ms": added("p99_ms"),
        "added_ttft_p50_ms": added("ttft_p50_ms"),
    }
