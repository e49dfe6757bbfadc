"""manage.py bench_web [--scale 1.0] [--requests 500] [--concurrency 4] [--workers 2]

Web performance of marketplace search and the dashboards at ten times the demo, behind
gunicorn, next to a trivial view on the same server in the same run. Prints one JSON
object.

1. Data (skipped when the database already holds it): at ``--scale 1`` 50 partners,
   250 sites over every region, 5,000 nodes of 8 GPUs (40,000 GPUs, two GPU models per
   site), one offer per site and model, 2,000 buyer contracts holding 8 GPUs each on
   reserved lines (a quarter of them starting next month, so the search window matters),
   hourly rollups (every GPU over the last 12 hours, the bench organization's GPUs over
   the whole month so far) and 30 days of per-minute availability bitmaps for every GPU.
   Nodes and offers come from ``bulk_create``, the bulk rows from ``generate_series``.
   The "bench" organization is buyer and partner: it owns a fifth of the sites (1,000
   nodes) and holds a contract of ten reserved lines (80 GPUs) and an inference line.
2. Server: gunicorn, ``--workers`` sync workers on 127.0.0.1:``--port``, DEBUG off
   (``DJANGO_DEBUG=0``), ``HASHGRID_BENCH_VIEWS=1`` (``devtools/bench.py``: a
   ``Server-Timing`` header and ``/bench/trivial``), the same database as this command.
3. Load: for each endpoint, ``--warmup`` requests then ``--requests`` requests, at most
   ``--concurrency`` in flight (httpx, one keep-alive connection each), signed in with a
   session created in the database (the bench organization's owner).

Endpoints: the trivial view; ``search`` (the marketplace's landing query, served from
the search cache after its first computation per worker and minute:
``marketplace.search_cache``); ``search_uncached`` (a different start on every request,
so every one computes its page from the database); a filtered search; the buyer
dashboard; the partner's node list.

Per endpoint: ``p50_ms``/``p95_ms`` of the server time (``Server-Timing``: the Django
request inside the worker), ``client_p50_ms``/``client_p95_ms`` as the client saw it, and
``rps`` (requests / wall-clock seconds). ``search_rps_ratio`` = search rps / trivial rps.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY
from django.contrib.auth import SESSION_KEY as USER_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.db.models import Sum
from django.utils import timezone

from accounts.models import ApiKey, Membership, Organization, Role, User
from accounts.tenancy import SESSION_KEY as ORGANIZATION_SESSION_KEY
from capacity.metering.models import GpuAvailabilityDay, HourlyUsage
from capacity.metering.pool_availability import refresh_pool_availability
from capacity.models import (
    EnergySource,
    GpuDevice,
    GpuModel,
    Node,
    NodeStatus,
    Offer,
    Region,
    Site,
)
from contracts.models import (
    Allocation,
    Contract,
    ContractLine,
    ContractState,
    InferenceProduct,
    LineApiKey,
    LineKind,
)
from contracts.terms import month_start

BENCH_SLUG = "bench-web"
BENCH_EMAIL = "bench-web@hashgrid.example"
GPUS_PER_NODE = 8
NODES_PER_SITE = 20
SITES_PER_PARTNER = 5
# Every BENCH_SITE_EVERY-th site belongs to the bench organization.
BENCH_SITE_EVERY = 5
BENCH_RESERVED_LINES = 10
FLEET_ROLLUP_HOURS = 12
AVAILABILITY_DAYS = 30
COUNTRIES = {
    Region.NORTH_AMERICA: "US",
    Region.SOUTH_AMERICA: "BR",
    Region.EUROPE: "NO",
    Region.MIDDLE_EAST: "AE",
    Region.EAST_AFRICA: "KE",
    Region.AFRICA: "NG",
    Region.ASIA_PACIFIC: "JP",
}
TARGET_SEARCH_P95_MS = 50
TARGET_SEARCH_RPS_RATIO = 0.5


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))
    return ordered[index]


class Command(BaseCommand):
    help = "Benchmark search and the dashboards behind gunicorn; print one JSON object."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 5,000 nodes")
        parser.add_argument("--requests", type=int, default=500, help="per endpoint")
        parser.add_argument("--warmup", type=int, default=20, help="per endpoint, not counted")
        parser.add_argument("--concurrency", type=int, default=4)
        parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
        parser.add_argument("--port", type=int, default=8121)

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        organization = Organization.objects.filter(slug=BENCH_SLUG).first()
        if organization is None:
            self._log(f"generating data at scale {options['scale']} …")
            organization = generate(scale=options["scale"], log=self._log)
        else:
            self._log("reusing the bench data already in this database")
        # What beat does every 5 minutes in production: search reads these figures.
        refresh_pool_availability()
        setup_seconds = time.perf_counter() - started
        sizes = data_sizes()
        cookie = bench_session_cookie(organization)
        gpu_model_id = (
            Offer.objects.filter(site__organization__slug__startswith=BENCH_SLUG)
            .values_list("gpu_model_id", flat=True)
            .first()
        )
        tomorrow = (timezone.now() + timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )

        minutes = itertools.count()

        def uncached_search() -> str:
            # A start one minute later on every request (warm-up included): every request
            # misses both search caches and computes the page from the database.
            start = tomorrow + timedelta(minutes=next(minutes))
            return f"/marketplace/?starts_at={start:%Y-%m-%dT%H:%M}"

        endpoints: dict[str, str | Callable[[], str]] = {
            "trivial": "/bench/trivial",
            "search": "/marketplace/",
            "search_uncached": uncached_search,
            "search_filtered": (
                f"/marketplace/?gpu_model={gpu_model_id}&gpu_count=8&term_months=3"
                "&sort=availability"
            ),
            "dashboard": "/dashboard/",
            "partner_nodes": "/partner/nodes/",
        }
        connection.close()  # the server's workers are the only database clients from here
        server = _start_gunicorn(port=options["port"], workers=options["workers"])
        try:
            base_url = f"http://127.0.0.1:{options['port']}"
            _wait_until_serving(base_url, server)
            results = asyncio.run(
                _drive(
                    base_url=base_url,
                    endpoints=endpoints,
                    cookie=cookie,
                    requests=options["requests"],
                    warmup=options["warmup"],
                    concurrency=options["concurrency"],
                )
            )
        finally:
            _stop(server)
        search, trivial = results["search"], results["trivial"]
        ratio = round(search["rps"] / trivial["rps"], 3) if trivial["rps"] else None
        output = {
            **sizes,
            "workers": options["workers"],
            "concurrency": options["concurrency"],
            "requests": options["requests"],
            "cpu_count": os.cpu_count(),
            "load_average": [round(value, 2) for value in os.getloadavg()],
            "setup_seconds": round(setup_seconds, 1),
            "endpoints": results,
            "search_rps_ratio": ratio,
            "target_met": bool(
                search["p95_ms"] <= TARGET_SEARCH_P95_MS
                and ratio is not None
                and ratio >= TARGET_SEARCH_RPS_RATIO
            ),
        }
        self.stdout.write(json.dumps(output))

    def _log(self, text: str) -> None:
        self.stderr.write(text)


# -- data -------------------------------------------------------------------------------


def data_sizes() -> dict[str, int]:
    bench = {"site__organization__slug__startswith": BENCH_SLUG}
    return {
        "nodes": Node.objects.filter(**bench).count(),
        "gpus": Node.objects.filter(**bench).aggregate(n=Sum("gpu_count"))["n"] or 0,
        "offers": Offer.objects.filter(**bench).count(),
        "contracts": Contract.objects.filter(buyer__slug__startswith=BENCH_SLUG).count(),
        "allocations": Allocation.objects.filter(
            line__contract__buyer__slug__startswith=BENCH_SLUG
        ).count(),
        "hourly_rows": HourlyUsage.objects.filter(
            node__site__organization__slug__startswith=BENCH_SLUG
        ).count(),
        "availability_rows": GpuAvailabilityDay.objects.filter(
            gpu__node__site__organization__slug__startswith=BENCH_SLUG
        ).count(),
    }


@transaction.atomic
def generate(*, scale: float, log: Any = lambda text: None) -> Organization:
    """Write the bench data set (see the module docstring); return the bench organization."""
    models = list(GpuModel.objects.order_by("pk")[:2])
    if not models:
        raise CommandError("the GPU catalog is empty (migrate first)")
    node_count = max(NODES_PER_SITE // 4, round(5000 * scale))
    site_count = max(1, -(-node_count // NODES_PER_SITE))
    partner_count = max(1, -(-site_count // SITES_PER_PARTNER))
    contract_count = max(2, round(2000 * scale))
    now = timezone.now()
    long_ago = now - timedelta(days=60)
    this_month = month_start(now)

    bench = Organization.objects.create(
        name="Bench organization", slug=BENCH_SLUG, is_buyer=True, is_partner=True
    )
    partners = Organization.objects.bulk_create(
        Organization(
            name=f"Bench partner {i}",
            slug=f"{BENCH_SLUG}-partner-{i}",
            is_partner=True,
            is_buyer=False,
        )
        for i in range(partner_count)
    )
    regions = list(Region)
    sources = list(EnergySource)
    sites = Site.objects.bulk_create(
        Site(
            organization=bench if i % BENCH_SITE_EVERY == 0 else partners[i // SITES_PER_PARTNER],
            name=f"Bench site {i:04d}",
            country=COUNTRIES[regions[i % len(regions)]],
            region=regions[i % len(regions)],
            latitude=Decimal("10.5"),
            longitude=Decimal("20.25"),
            power_capacity_kw=5_000,
            energy_source=sources[i % len(sources)],
            energy_price_per_kwh=Decimal("0.04"),
            created_at=long_ago,
        )
        for i in range(site_count)
    )
    statuses = [NodeStatus.ONLINE] * 90 + [NodeStatus.DEGRADED] * 4 + [NodeStatus.MAINTENANCE] * 3
    statuses += [NodeStatus.UNREACHABLE] * 2 + [NodeStatus.RETIRED]
    nodes = Node.objects.bulk_create(
        (
            Node(
                site=sites[i // NODES_PER_SITE],
                name=f"node-{i:05d}",
                gpu_model=models[i % len(models)],
                gpu_count=GPUS_PER_NODE,
                cpu_cores=64,
                ram_gib=1024,
                status=statuses[i % len(statuses)],
                enrolled_at=long_ago,
                last_poll_at=now,
                last_successful_poll_at=now,
                gpu_utilization_pct=i % 100,
                created_at=long_ago,
            )
            for i in range(node_count)
        ),
        batch_size=2000,
    )
    log(f"  {len(sites)} sites, {len(nodes)} nodes")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO capacity_gpudevice (node_id, uuid, index, memory_mib, model, created_at)
            SELECT node.id, 'GPU-bench-' || node.id || '-' || i, i, model.memory_mib,
                   model.name, %s
            FROM capacity_node AS node
            JOIN capacity_gpumodel AS model ON model.id = node.gpu_model_id
            CROSS JOIN generate_series(0, %s - 1) AS i
            WHERE node.id = ANY(%s)
            """,
            [long_ago, GPUS_PER_NODE, [node.pk for node in nodes]],
        )
    pools: dict[tuple[int, int], int] = {}
    for node in nodes:
        if node.status != NodeStatus.RETIRED:
            key = (node.site_id, node.gpu_model_id)
            pools[key] = pools.get(key, 0) + node.gpu_count
    offers = Offer.objects.bulk_create(
        Offer(
            site_id=site_id,
            gpu_model_id=model_id,
            gpu_count=gpus,
            on_demand_price_per_gpu_hour=Decimal("3.0000") + Decimal(index % 50) / 100,
            reserved_price_1m_per_gpu_hour=Decimal("2.5000") + Decimal(index % 37) / 100,
            reserved_price_3m_per_gpu_hour=Decimal("2.3000") + Decimal(index % 41) / 100,
            reserved_price_6m_per_gpu_hour=Decimal("2.1000") + Decimal(index % 43) / 100,
            reserved_price_12m_per_gpu_hour=Decimal("1.9000") + Decimal(index % 47) / 100,
            available_from=long_ago,
            created_at=long_ago,
        )
        for index, ((site_id, model_id), gpus) in enumerate(sorted(pools.items()))
    )
    offer_of = {(offer.site_id, offer.gpu_model_id): offer for offer in offers}
    log(f"  {len(offers)} offers")

    # Contracts: the bench organization's (ten reserved lines and an inference line), then
    # one per buyer with one reserved line of one node. Lines take nodes in a stride so
    # every site has some of its GPUs held.
    buyers = [
        bench,
        *Organization.objects.bulk_create(
            Organization(name=f"Bench buyer {i}", slug=f"{BENCH_SLUG}-buyer-{i}", is_buyer=True)
            for i in range(contract_count - 1)
        ),
    ]
    contracts = Contract.objects.bulk_create(
        Contract(
            buyer=buyer,
            state=ContractState.ACTIVE,
            starts_at=long_ago,
            term_months=12,
            term_ends_at=long_ago + timedelta(days=365),
            activated_at=long_ago,
            monthly_commitment_minor=500_000 if index == 0 else 0,
            created_at=long_ago,
        )
        for index, buyer in enumerate(buyers)
    )
    usable = [node for node in nodes if node.status != NodeStatus.RETIRED]
    stride = 7 if len(usable) % 7 else 11
    next_month = month_start(this_month + timedelta(days=40))
    lines: list[ContractLine] = []
    line_nodes: list[Node] = []
    line_count = 0
    for index, contract in enumerate(contracts):
        for _ in range(BENCH_RESERVED_LINES if index == 0 else 1):
            if line_count >= len(usable):
                break
            node = usable[(line_count * stride) % len(usable)]
            starts = next_month if line_count % 4 == 3 else long_ago
            ends = starts + timedelta(days=365 if line_count % 4 != 1 else 45)
            offer = offer_of[(node.site_id, node.gpu_model_id)]
            lines.append(
                ContractLine(
                    contract=contract,
                    kind=LineKind.RESERVED,
                    offer=offer,
                    gpu_count=node.gpu_count,
                    term_months=12,
                    price_per_gpu_hour=offer.reserved_price_12m_per_gpu_hour,
                    starts_at=starts,
                    ends_at=ends,
                    created_at=long_ago,
                )
            )
            line_nodes.append(node)
            line_count += 1
    product = InferenceProduct.objects.order_by("pk").first()
    inference_line = None
    if product is not None:
        inference_line = ContractLine(
            contract=contracts[0],
            kind=LineKind.INFERENCE,
            inference_product=product,
            input_price_per_million_tokens=product.input_price_per_million_tokens,
            output_price_per_million_tokens=product.output_price_per_million_tokens,
            starts_at=long_ago,
            created_at=long_ago,
        )
    lines = ContractLine.objects.bulk_create(
        [*lines, *([inference_line] if inference_line else [])], batch_size=2000
    )
    if inference_line is not None:
        inference_key = ApiKey.objects.create(
            organization=bench, name="bench inference", prefix="benchweb", key_hash="0" * 64
        )
        LineApiKey.objects.create(line=lines[-1], api_key=inference_key)
    gpus_of: dict[int, list[int]] = {}
    for gpu_id, node_id in GpuDevice.objects.filter(node__in=line_nodes).values_list(
        "pk", "node_id"
    ):
        gpus_of.setdefault(node_id, []).append(gpu_id)
    Allocation.objects.bulk_create(
        (
            Allocation(
                line=line,
                gpu_device_id=gpu_id,
                period=DateTimeTZRange(line.starts_at, line.ends_at, "[)"),
                created_at=long_ago,
            )
            for line, node in zip(lines, line_nodes, strict=False)
            for gpu_id in gpus_of[node.pk]
        ),
        batch_size=5000,
    )
    log(f"  {len(contracts)} contracts, {len(line_nodes)} reserved lines")
    _usage(bench=bench, now=now, this_month=this_month, log=log)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return bench


def _usage(*, bench: Organization, now: Any, this_month: Any, log: Any) -> None:
    hourly = HourlyUsage._meta.db_table
    days = GpuAvailabilityDay._meta.db_table
    hour_now = now.replace(minute=0, second=0, microsecond=0)
    fleet_since = max(this_month, hour_now - timedelta(hours=FLEET_ROLLUP_HOURS))
    with connection.cursor() as cursor:
        # One rollup row per GPU and hour: 'allocation' where a reservation holds the GPU
        # that hour, 'idle' elsewhere. The bench organization's GPUs over the whole month.
        cursor.execute(
            f"""
            INSERT INTO {hourly} (node_id, gpu_id, workload_kind, workload_ref, hour, busy_ms,
                energy_mj, input_tokens, output_tokens, requests, record_count)
            SELECT gpu.node_id, gpu.id,
                   CASE WHEN held.id IS NULL THEN 'idle' ELSE 'allocation' END, '',
                   hour, 1800000 + gpu.id %% 1800000, 2500000000, 0, 0, 0, 60
            FROM capacity_gpudevice AS gpu
            JOIN capacity_node AS node ON node.id = gpu.node_id
            JOIN capacity_site AS site ON site.id = node.site_id
            JOIN accounts_organization AS org ON org.id = site.organization_id
            CROSS JOIN generate_series(%(since)s::timestamptz, %(until)s, interval '1 hour') AS hour
            LEFT JOIN contracts_allocation AS held
              ON held.gpu_device_id = gpu.id AND held.period @> hour
            WHERE org.slug LIKE %(prefix)s AND node.status <> 'retired'
              AND (hour >= %(fleet_since)s OR EXISTS (
                SELECT 1 FROM contracts_allocation AS mine
                JOIN contracts_contractline AS line ON line.id = mine.line_id
                JOIN contracts_contract AS contract ON contract.id = line.contract_id
                WHERE mine.gpu_device_id = gpu.id AND contract.buyer_id = %(bench)s))
            """,  # noqa: S608 (table names from model metadata)
            {
                "since": this_month,
                "until": hour_now - timedelta(hours=1),
                "fleet_since": fleet_since,
                "prefix": f"{BENCH_SLUG}%",
                "bench": bench.pk,
            },
        )
        log(f"  {cursor.rowcount} hourly rollup rows")
        # Availability: every minute up to now for 30 days; one GPU in ten missed an hour
        # a day.
        cursor.execute(
            f"""
            INSERT INTO {days} (gpu_id, day, minutes)
            SELECT gpu.id, day::date,
                   CASE WHEN day::date = %(today)s
                        THEN (repeat('1', %(minutes_today)s) || repeat('0', 1440 - %(minutes_today)s))::bit(1440)
                        WHEN gpu.id %% 10 = 0
                        THEN (repeat('1', 1380) || repeat('0', 60))::bit(1440)
                        ELSE repeat('1', 1440)::bit(1440) END
            FROM capacity_gpudevice AS gpu
            JOIN capacity_node AS node ON node.id = gpu.node_id
            JOIN capacity_site AS site ON site.id = node.site_id
            JOIN accounts_organization AS org ON org.id = site.organization_id
            CROSS JOIN generate_series(%(first)s::date, %(today)s::date, interval '1 day') AS day
            WHERE org.slug LIKE %(prefix)s AND node.status <> 'retired'
            """,  # noqa: S608 (table names from model metadata)
            {
                "today": now.date(),
                "first": now.date() - timedelta(days=AVAILABILITY_DAYS),
                "minutes_today": now.hour * 60 + now.minute,
                "prefix": f"{BENCH_SLUG}%",
            },
        )
        log(f"  {cursor.rowcount} availability days")


def bench_session_cookie(organization: Organization) -> str:
    """A signed-in session for the bench organization's owner, as its cookie value."""
    user, created = User.objects.get_or_create(
        email=BENCH_EMAIL, defaults={"username": BENCH_EMAIL}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    Membership.objects.get_or_create(
        user=user, organization=organization, defaults={"role": Role.OWNER}
    )
    session = SessionStore()
    session[USER_SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session[ORGANIZATION_SESSION_KEY] = organization.pk
    session.create()
    assert session.session_key is not None
    return session.session_key


# -- server and load --------------------------------------------------------------------


def _start_gunicorn(*, port: int, workers: int) -> subprocess.Popen[bytes]:
    database = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": (
            f"postgres://{database['USER']}:{database['PASSWORD'] or ''}@{database['HOST']}:"
            f"{database['PORT']}/{database['NAME']}"
        ),
        "DJANGO_DEBUG": "0",
        "HASHGRID_BENCH_VIEWS": "1",
        "LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, env=env, cwd=settings.BASE_DIR)  # noqa: S603


def _wait_until_serving(base_url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CommandError(f"gunicorn exited with {server.returncode}")
        try:
            if httpx.get(f"{base_url}/bench/trivial", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise CommandError("gunicorn did not answer /bench/trivial within 60 s")


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def _drive(
    *,
    base_url: str,
    endpoints: dict[str, str | Callable[[], str]],
    cookie: str,
    requests: int,
    warmup: int,
    concurrency: int,
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url,
        cookies={settings.SESSION_COOKIE_NAME: cookie},
        limits=limits,
        timeout=60,
        follow_redirects=False,
    ) as client:
        for name, url in endpoints.items():
            await _burst(client, url, warmup, concurrency)
            started = time.perf_counter()
            server_ms, client_ms = await _burst(client, url, requests, concurrency)
            wall = time.perf_counter() - started
            results[name] = {
                "url": url if isinstance(url, str) else url(),
                "p50_ms": round(statistics.median(server_ms), 2),
                "p95_ms": round(_percentile(server_ms, 95), 2),
                "client_p50_ms": round(statistics.median(client_ms), 2),
                "client_p95_ms": round(_percentile(client_ms, 95), 2),
                "rps": round(requests / wall, 1),
            }
    return results


async def _burst(
    client: httpx.AsyncClient, url: str | Callable[[], str], count: int, concurrency: int
) -> tuple[list[float], list[float]]:
    """``count`` GETs of ``url`` (or of a new ``url()`` for every request)."""
    server_ms: list[float] = []
    client_ms: list[float] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await client.get(url if isinstance(url, str) else url())
            client_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise CommandError(f"GET {url} answered {response.status_code}")
            timing = response.headers.get("server-timing", "")
            server_ms.append(float(timing.partition("dur=")[2]))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return server_ms, client_ms
