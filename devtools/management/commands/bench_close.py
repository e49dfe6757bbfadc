"""manage.py bench_close --contracts 10000 --records 5000000

Generates a month of usage for that many contracts straight into metering's tables (SQL
``generate_series``: usage records, then their hourly rollups, as ingest would leave
them), closes the month (rating, drafts, gap-free numbering, finalization, ledger; no
charges), and prints one JSON object:

- ``seconds``: the close;
- ``groupby_seconds``: one SQL GROUP BY over the same usage records (the floor any
  rating must pay to read the month's usage once), in the same run;
- ``ratio``: seconds / groupby_seconds.

Everything runs in one transaction that is rolled back at the end (``--keep`` commits).
Contracts: each has an inference line with its API key; every 4th also on-demand GPU
with a second key; every 10th also one reserved GPU for the whole month (with
availability observed every minute, so the SLA is read for real).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from accounts.models import ApiKey, Organization
from billing.closing import close_period
from billing.models import Invoice, InvoiceLine
from billing.periods import month_bounds, parse_month
from capacity.metering.attribution import attribute_new_records
from capacity.metering.models import (
    GpuAvailabilityDay,
    HourlyUsage,
    InferenceUsageHour,
    UsageRecord,
)
from capacity.models import GpuDevice, GpuModel, Node, NodeStatus, Offer, Site
from contracts.models import (
    Allocation,
    Contract,
    ContractLine,
    ContractState,
    InferenceProduct,
    LineApiKey,
    LineKind,
)

GPUS_PER_NODE = 8
MINUTES_PER_RECORD = 1


class Rollback(Exception):
    pass


class Command(BaseCommand):
    help = "Benchmark closing a month: generate contracts and usage, close, print JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--contracts", type=int, default=10_000)
        parser.add_argument("--records", type=int, default=5_000_000)
        parser.add_argument("--month", default="2031-01", help="YYYY-MM to generate and close")
        parser.add_argument("--keep", action="store_true", help="commit the generated data")

    def handle(self, *args: Any, **options: Any) -> None:
        month = parse_month(options["month"])
        if Invoice.objects.filter(month=month).exists():
            raise CommandError(f"{month:%Y-%m} already has invoices; pick another --month")
        result: dict[str, Any] = {}
        try:
            with transaction.atomic():
                result = self._run(month, options["contracts"], options["records"])
                if not options["keep"]:
                    raise Rollback
        except Rollback:
            pass
        self.stdout.write(json.dumps(result))

    def _log(self, text: str) -> None:
        self.stderr.write(text)

    def _run(self, month: date, contract_count: int, record_count: int) -> dict[str, Any]:
        started = time.perf_counter()
        start, end = month_bounds(month)
        minutes = int((end - start).total_seconds() // 60)
        usage_gpus = max(GPUS_PER_NODE, -(-record_count // minutes))
        reserved_count = contract_count // 10
        self._log(f"generating {contract_count} contracts, {usage_gpus} busy GPUs …")
        ids = self._contracts(month, contract_count, usage_gpus, reserved_count)
        self._log(f"generating {record_count} usage records and their rollups …")
        rollup_rows = self._usage(start, end, record_count, ids)
        # As beat does every minute in production: stamp records and rollups with their key
        # and line, which is what rating reads.
        attribute_new_records()
        self._availability(month, ids["reserved_gpu_ids"])
        setup_seconds = time.perf_counter() - started
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        self._log("closing …")
        now = end + timedelta(days=5)
        t0 = time.perf_counter()
        close = close_period(month=month, now=now, charge=False)
        seconds = time.perf_counter() - t0
        usage_table = UsageRecord._meta.db_table
        t0 = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT workload_kind, workload_ref, sum(busy_ms), sum(input_tokens),
                       sum(output_tokens), count(*)
                FROM {usage_table}
                WHERE window_start >= %s AND window_start < %s
                GROUP BY workload_kind, workload_ref
                """,  # noqa: S608 (table name from model metadata)
                [start, end],
            )
            groups = len(cursor.fetchall())
        groupby_seconds = time.perf_counter() - t0
        invoices = Invoice.objects.filter(month=month, status="finalized").count()
        return {
            "contracts": contract_count,
            "records": record_count,
            "rollup_rows": rollup_rows,
            "invoices": invoices,
            "invoice_lines": InvoiceLine.objects.filter(invoice__month=month).count(),
            "seconds": round(seconds, 3),
            "groupby_seconds": round(groupby_seconds, 3),
            "ratio": round(seconds / groupby_seconds, 2) if groupby_seconds else None,
            "groupby_groups": groups,
            "finalized": close.finalized,
            "setup_seconds": round(setup_seconds, 1),
        }

    def _contracts(
        self, month: date, count: int, usage_gpus: int, reserved_count: int
    ) -> dict[str, Any]:
        start = month_bounds(month)[0]
        before = start - timedelta(days=15)
        partner = Organization.objects.create(
            name="Bench partner",
            slug=f"bench-partner-{month:%Y%m}",
            is_buyer=False,
            is_partner=True,
        )
        model = GpuModel.objects.order_by("pk").first()
        if model is None:
            raise CommandError("the GPU catalog is empty (migrate first)")
        site = Site.objects.create(
            organization=partner,
            name="Bench site",
            country="US",
            region="north_america",
            latitude=Decimal("31.9"),
            longitude=Decimal("-102.0"),
            power_capacity_kw=100_000,
            energy_source="flare_gas",
            energy_price_per_kwh=Decimal("0.03"),
        )
        total_gpus = usage_gpus + reserved_count
        nodes = Node.objects.bulk_create(
            Node(
                site=site,
                name=f"bench-{i:05d}",
                gpu_model=model,
                gpu_count=GPUS_PER_NODE,
                cpu_cores=64,
                ram_gib=1024,
                status=NodeStatus.ONLINE,
            )
            for i in range(-(-total_gpus // GPUS_PER_NODE))
        )
        gpus = GpuDevice.objects.bulk_create(
            GpuDevice(
                node=nodes[i // GPUS_PER_NODE],
                uuid=f"GPU-bench-{month:%Y%m}-{i:08d}",
                index=i % GPUS_PER_NODE,
                memory_mib=81920,
                model=model.name,
            )
            for i in range(total_gpus)
        )
        offer = Offer.objects.create(
            site=site,
            gpu_model=model,
            gpu_count=total_gpus,
            on_demand_price_per_gpu_hour=Decimal("2.4000"),
            reserved_price_1m_per_gpu_hour=Decimal("2.1000"),
            reserved_price_3m_per_gpu_hour=Decimal("1.9000"),
            reserved_price_6m_per_gpu_hour=Decimal("1.8000"),
            reserved_price_12m_per_gpu_hour=Decimal("1.6000"),
            available_from=before,
        )
        product = InferenceProduct.objects.create(
            slug=f"bench-llm-{month:%Y%m}",
            name="Bench LLM",
            input_price_per_million_tokens=Decimal("0.2000"),
            output_price_per_million_tokens=Decimal("0.6000"),
        )
        buyers = Organization.objects.bulk_create(
            Organization(name=f"Bench buyer {i}", slug=f"bench-{month:%Y%m}-{i}", is_buyer=True)
            for i in range(count)
        )
        contracts = Contract.objects.bulk_create(
            Contract(
                buyer=buyer,
                state=ContractState.ACTIVE,
                starts_at=before,
                term_months=12,
                term_ends_at=before + timedelta(days=365),
                activated_at=before,
                monthly_commitment_minor=5_000 if i % 3 == 0 else 0,
            )
            for i, buyer in enumerate(buyers)
        )
        lines: list[ContractLine] = []
        for i, contract in enumerate(contracts):
            lines.append(
                ContractLine(
                    contract=contract,
                    kind=LineKind.INFERENCE,
                    inference_product=product,
                    input_price_per_million_tokens=product.input_price_per_million_tokens,
                    output_price_per_million_tokens=product.output_price_per_million_tokens,
                    starts_at=before,
                )
            )
            if i % 4 == 0:
                lines.append(
                    ContractLine(
                        contract=contract,
                        kind=LineKind.ON_DEMAND_GPU,
                        offer=offer,
                        price_per_gpu_hour=offer.on_demand_price_per_gpu_hour,
                        starts_at=before,
                    )
                )
            if i % 10 == 0 and i // 10 < reserved_count:
                lines.append(
                    ContractLine(
                        contract=contract,
                        kind=LineKind.RESERVED,
                        offer=offer,
                        gpu_count=1,
                        term_months=12,
                        price_per_gpu_hour=Decimal("2.1000"),
                        starts_at=before,
                        ends_at=before + timedelta(days=365),
                    )
                )
        lines = ContractLine.objects.bulk_create(lines, batch_size=5000)
        keys: list[ApiKey] = []
        key_lines: list[ContractLine] = []
        for line in lines:
            if line.kind == LineKind.RESERVED:
                continue
            digest = hashlib.sha256(f"bench-{month}-{line.pk}".encode()).hexdigest()
            keys.append(
                ApiKey(
                    organization_id=line.contract.buyer_id,
                    name=f"bench {line.kind}",
                    prefix=f"b{line.pk:09d}",
                    key_hash=digest,
                    created_at=before,
                )
            )
            key_lines.append(line)
        keys = ApiKey.objects.bulk_create(keys, batch_size=5000)
        LineApiKey.objects.bulk_create(
            (LineApiKey(line=line, api_key=key) for line, key in zip(key_lines, keys, strict=True)),
            batch_size=5000,
        )
        reserved_lines = [line for line in lines if line.kind == LineKind.RESERVED]
        reserved_gpus = gpus[usage_gpus:]
        Allocation.objects.bulk_create(
            (
                Allocation(
                    line=line,
                    gpu_device=gpu,
                    period=DateTimeTZRange(before, before + timedelta(days=365), "[)"),
                )
                for line, gpu in zip(reserved_lines, reserved_gpus, strict=False)
            ),
            batch_size=5000,
        )
        refs: list[tuple[int, str, str, int]] = []
        by_contract: dict[int, dict[str, str]] = {}
        for line, key in zip(key_lines, keys, strict=True):
            refs_of = by_contract.setdefault(line.contract_id, {})
            if line.kind == LineKind.INFERENCE:
                refs_of["inference"] = f"{product.slug}@{key.prefix}"
                refs_of["inference_line"] = str(line.pk)
            else:
                refs_of["gpu"] = f"gpu@{key.prefix}"
        for index, contract in enumerate(contracts):
            refs_of = by_contract[contract.pk]
            refs.append(
                (
                    index,
                    refs_of["inference"],
                    refs_of.get("gpu", ""),
                    int(refs_of["inference_line"]),
                )
            )
        return {
            "usage_gpus": [(gpu.pk, gpu.node_id) for gpu in gpus[:usage_gpus]],
            "reserved_gpu_ids": [gpu.pk for gpu in reserved_gpus],
            "refs": refs,
            "contracts": count,
        }

    def _usage(self, start: datetime, end: datetime, record_count: int, ids: dict[str, Any]) -> int:
        usage = UsageRecord._meta.db_table
        hourly = HourlyUsage._meta.db_table
        gpus = ids["usage_gpus"]
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE bench_refs (idx int PRIMARY KEY, inference_ref text, gpu_ref text,"
                " inference_line bigint) ON COMMIT DROP"
            )
            cursor.executemany("INSERT INTO bench_refs VALUES (%s, %s, %s, %s)", ids["refs"])
            # Record k: GPU k mod G, minute k div G; each (GPU, hour) serves one contract,
            # so a rollup row holds an hour of one workload (60 records), as in production.
            cursor.execute(
                f"""
                INSERT INTO {usage} (
                    node_id, journal_epoch, seq, record_hash, gpu_id, window_start, window_end,
                    workload_kind, workload_ref, busy_ms, energy_mj, input_tokens, output_tokens,
                    requests, received_at)
                SELECT fleet.node_ids[k %% fleet.g + 1], 'bench', k, md5(k::text) || md5(k::text),
                       fleet.gpu_ids[k %% fleet.g + 1],
                       %(start)s + make_interval(mins => (k / fleet.g)::int),
                       %(start)s + make_interval(mins => (k / fleet.g)::int + 1),
                       CASE WHEN r.gpu_ref <> '' AND (k / fleet.g / 60) %% 2 = 0
                            THEN 'allocation' ELSE 'inference' END,
                       CASE WHEN r.gpu_ref <> '' AND (k / fleet.g / 60) %% 2 = 0
                            THEN r.gpu_ref ELSE r.inference_ref END,
                       30000 + (k %% 30000), 1000000, 1000 + (k %% 90000), 100 + (k %% 30000),
                       1 + k %% 20, %(start)s
                FROM generate_series(0, %(n)s - 1) AS k
                CROSS JOIN (SELECT %(g)s::bigint AS g,
                                     %(gpu_ids)s::bigint[] AS gpu_ids,
                                     %(node_ids)s::bigint[] AS node_ids) AS fleet
                JOIN bench_refs AS r
                  ON r.idx = (((k / fleet.g / 60) * fleet.g + k %% fleet.g) %% %(contracts)s)
                WHERE %(start)s + make_interval(mins => (k / fleet.g)::int) < %(end)s
                """,  # noqa: S608 (table names from model metadata)
                {
                    "start": start,
                    "end": end,
                    "n": record_count,
                    "g": len(gpus),
                    "gpu_ids": [gpu_id for gpu_id, _ in gpus],
                    "node_ids": [node_id for _, node_id in gpus],
                    "contracts": ids["contracts"],
                },
            )
            cursor.execute(
                f"""
                INSERT INTO {hourly} (node_id, gpu_id, workload_kind, workload_ref, hour, busy_ms,
                    energy_mj, input_tokens, output_tokens, requests, record_count)
                SELECT node_id, gpu_id, workload_kind, coalesce(workload_ref, ''),
                       date_trunc('hour', window_start, 'UTC'), sum(busy_ms), sum(energy_mj),
                       sum(input_tokens), sum(output_tokens), sum(requests), count(*)
                FROM {usage} WHERE journal_epoch = 'bench'
                GROUP BY node_id, gpu_id, workload_kind, coalesce(workload_ref, ''),
                         date_trunc('hour', window_start, 'UTC')
                """  # noqa: S608
            )
            # Inference is billed from receipts' rollup (protocol v1.1): the inference
            # records' tokens as if each had been a request metered against a receipt of
            # the contract's inference line (the refs only pick the line, here).
            cursor.execute(
                f"""
                INSERT INTO {InferenceUsageHour._meta.db_table} (
                    line_id, node_id, hour, input_tokens, output_tokens, requests)
                SELECT r.inference_line, h.node_id, h.hour, sum(h.input_tokens),
                       sum(h.output_tokens), sum(h.requests)
                FROM {hourly} AS h
                JOIN bench_refs AS r ON r.inference_ref = h.workload_ref
                WHERE h.workload_kind = 'inference'
                GROUP BY 1, 2, 3
                """  # noqa: S608
            )
            return cursor.rowcount

    def _availability(self, month: date, gpu_ids: list[int]) -> None:
        if not gpu_ids:
            return
        table = GpuAvailabilityDay._meta.db_table
        start, end = month_bounds(month)
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {table} (gpu_id, day, minutes)
                SELECT gpu_id, day::date, repeat('1', 1440)::bit(1440)
                FROM unnest(%s::bigint[]) AS gpu_id,
                     generate_series(%s::date, %s::date - 1, interval '1 day') AS day
                """,  # noqa: S608
                [gpu_ids, start.date(), end.date()],
            )
