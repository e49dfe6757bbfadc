"""Usage and cost of a buyer's contracts: what the buyer's pages and the usage API show.

Cost is the invoice's: ``contracts.charges`` prices the billable usage of
``contracts.billable_usage`` exactly as rating does, so the month to date shown at the
month's end is the month's invoice to the cent (before what only an invoice has: late
usage of earlier months, the commitment true-up, fees). On-demand usage is the billable
rollup hours of the contract's lines; reserved GPUs add their own work (busy time,
energy) from the rollups of the hours an allocation held them, which the reservation
pays for whatever ran. Energy: 1 kWh = 3.6e9 mJ.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Trunc

from capacity.metering.models import HourlyUsage
from capacity.models import Node
from config.charts import ChartSeries, chart_spec
from contracts.billable_usage import (
    BUCKETS,
    Bucket,
    MeteredQuantities,
    UsageKey,
    held_gpu_seconds,
    metered_quantities,
)
from contracts.charges import PRECISION, held_charge, line_charges, metered_charges
from contracts.models import Allocation, Contract, ContractLine, LineKind
from contracts.money import minor_to_major, round_money

MJ_PER_KWH = Decimal(3_600_000_000)
# Workload kinds of the records of a reserved GPU's own work.
RESERVED_WORK_KINDS = ("allocation", "assignment")
QUANTITIES = ("busy_ms", "energy_mj", "input_tokens", "output_tokens", "requests")


@dataclass
class UsageBucket:
    start: datetime
    busy_ms: int = 0
    energy_mj: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    # What the bucket's billable usage costs, minor units of ``currency`` (without SLA
    # credits, which are the month's): ``bucket_costs_minor``.
    cost_minor: int = 0
    currency: str = ""

    @property
    def cost(self) -> Decimal:
        return minor_to_major(self.cost_minor)

    @property
    def busy_gpu_hours(self) -> Decimal:
        return (Decimal(self.busy_ms) / Decimal(3_600_000)).quantize(Decimal("0.0001"))

    @property
    def energy_kwh(self) -> Decimal:
        return (Decimal(self.energy_mj) / MJ_PER_KWH).quantize(Decimal("0.0001"))

    def add(self, row: Mapping[str, Any]) -> None:
        for name in QUANTITIES:
            setattr(self, name, getattr(self, name) + int(row.get(name) or 0))


def _reserved_rollups(
    contracts: list[Contract], since: datetime, until: datetime
) -> QuerySet[HourlyUsage]:
    """Rollup hours of work on the contracts' reserved GPUs while the reservation held
    them (legacy allocation records and the reserved workloads' assignment records)."""
    hour_end = OuterRef("hour") + timedelta(hours=1)
    held = Allocation.objects.filter(
        line__contract__in=contracts, gpu_device=OuterRef("gpu_id"), workload__isnull=True
    ).filter(
        Q(period__contains=OuterRef("hour"))
        | Q(period__startswith__gt=OuterRef("hour"), period__startswith__lt=hour_end)
    )
    # The GPUs the contracts ever held, as a plain IN list too: it lets the planner start
    # from those GPUs (rollup index on gpu) instead of scanning the period's rollups.
    held_gpus = Allocation.objects.filter(
        line__contract__in=contracts, workload__isnull=True
    ).values("gpu_device_id")
    return HourlyUsage.objects.filter(
        workload_kind__in=RESERVED_WORK_KINDS, hour__gte=since, hour__lt=until, gpu_id__in=held_gpus
    ).filter(Exists(held))


def usage_buckets(
    *, contract: Contract, bucket: str, since: datetime, until: datetime
) -> list[UsageBucket]:
    """The contract's usage per UTC hour or day in ``[since, until)``, oldest first."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}")
    unit: Bucket = "hour" if bucket == "hour" else "day"
    buckets: dict[datetime, UsageBucket] = {}
    reserved = (
        _reserved_rollups([contract], since, until)
        .annotate(bucket=Trunc("hour", unit, tzinfo=UTC))
        .order_by()
        .values("bucket")
        .annotate(**{name: Sum(name) for name in QUANTITIES})
    )
    for row in reserved:
        buckets.setdefault(row["bucket"], UsageBucket(start=row["bucket"])).add(row)
    on_demand = metered_quantities(start=since, end=until, contract_ids=[contract.pk], bucket=unit)
    for key, quantities in on_demand.items():
        assert key.start is not None  # asked for by bucket
        buckets.setdefault(key.start, UsageBucket(start=key.start)).add(asdict(quantities))
    lines = {
        line.pk: line
        for line in ContractLine.objects.filter(contract=contract).select_related(
            "offer__site", "offer__gpu_model", "inference_product", "contract__sla_policy"
        )
    }
    # Reserved GPUs cost while held, used or not: such a bucket is listed for its cost.
    for start, cost_minor in bucket_costs_minor(
        lines=lines, since=since, until=until, bucket=unit
    ).items():
        buckets.setdefault(start, UsageBucket(start=start)).cost_minor = cost_minor
    for bucket_row in buckets.values():
        bucket_row.currency = contract.currency
    return [buckets[start] for start in sorted(buckets)]


@dataclass
class LineCost:
    line: ContractLine
    amount_minor: int


@dataclass
class MonthToDate:
    """A buyer's month so far: cost per line and per day, usage, energy and its sources."""

    since: datetime
    until: datetime
    line_costs: list[LineCost] = field(default_factory=list)
    daily_cost_minor: list[tuple[datetime, int]] = field(default_factory=list)
    busy_ms: int = 0
    energy_mj: int = 0
    inference_energy_mj: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    energy_mj_by_source: dict[str, int] = field(default_factory=dict)

    @property
    def total_minor(self) -> int:
        return sum(cost.amount_minor for cost in self.line_costs)

    @property
    def energy_kwh(self) -> Decimal:
        return (Decimal(self.energy_mj) / MJ_PER_KWH).quantize(Decimal("0.001"))

    @property
    def kwh_per_million_tokens(self) -> Decimal | None:
        tokens = self.input_tokens + self.output_tokens
        if not tokens:
            return None
        kwh = Decimal(self.inference_energy_mj) / MJ_PER_KWH
        return (kwh / (Decimal(tokens) / Decimal(1_000_000))).quantize(Decimal("0.001"))

    @property
    def source_mix(self) -> list[tuple[str, Decimal, int]]:
        """(energy source, kWh, percent of the total) by decreasing share."""
        total = sum(self.energy_mj_by_source.values())
        rows = []
        for source, mj in sorted(self.energy_mj_by_source.items(), key=lambda item: -item[1]):
            percent = round(mj * 100 / total) if total else 0
            rows.append((source, (Decimal(mj) / MJ_PER_KWH).quantize(Decimal("0.001")), percent))
        return rows


def _days(since: datetime, until: datetime) -> list[datetime]:
    days, day = [], since
    while day < until:
        days.append(day)
        day += timedelta(days=1)
    return days


def bucket_costs_minor(
    *,
    lines: Mapping[int, ContractLine],
    since: datetime,
    until: datetime,
    bucket: Bucket,
    metered: Mapping[UsageKey, MeteredQuantities] | None = None,
) -> dict[datetime, int]:
    """Cost of ``lines`` per UTC hour or day in ``[since, until)``, minor units: each
    bucket's billable usage priced alone (GPU-seconds reservations and instances held,
    tokens) and rounded once, without SLA credits (a credit is the month's). Buckets
    that cost nothing are absent. ``metered``: the lines' metered quantities by the same
    bucket when the caller already read them (by node or not)."""
    exact: dict[datetime, Decimal] = defaultdict(Decimal)
    held = held_gpu_seconds(start=since, end=until, line_ids=list(lines), bucket=bucket)
    if metered is None:
        metered = metered_quantities(start=since, end=until, line_ids=list(lines), bucket=bucket)
    with localcontext() as context:
        context.prec = PRECISION
        for key, seconds in held.items():
            assert key.start is not None  # asked for by bucket
            line = lines[key.line_id]
            exact[key.start] += held_charge(line=line, gpu_seconds=seconds).exact_amount
        for key, quantities in metered.items():
            assert key.start is not None  # asked for by bucket
            line = lines[key.line_id]
            for charge in metered_charges(line=line, usage=quantities):
                exact[key.start] += charge.exact_amount
        return {start: round_money(amount) for start, amount in exact.items() if amount}


def month_to_date(*, contracts: list[Contract], since: datetime, until: datetime) -> MonthToDate:
    """Cost (each line's charges as its invoice lines will carry them, each rounded once)
    and usage of ``contracts`` in ``[since, until)``.

    Reserved lines cost every held second whether used or not, less their SLA credit over
    the period; on-demand GPU lines the seconds their instances held GPUs (busy time
    shown), inference lines their tokens. The cost per day (the
    chart) prices each day's usage alone, without SLA credits (a credit is the period's).
    """
    result = MonthToDate(since=since, until=until)
    days = _days(since, until)
    lines = {
        line.pk: line
        for line in ContractLine.objects.filter(contract__in=contracts)
        .select_related(
            "offer__site", "offer__gpu_model", "inference_product", "contract__sla_policy"
        )
        .order_by("contract_id", "pk")
    }
    cost: dict[int, int] = defaultdict(int)
    for charge in line_charges(lines=lines, start=since, end=until):
        cost[charge.line.pk] += charge.amount_minor
    result.line_costs = [LineCost(line=line, amount_minor=cost[pk]) for pk, line in lines.items()]

    metered = metered_quantities(
        start=since, end=until, line_ids=list(lines), by_node=True, bucket="day"
    )
    daily = bucket_costs_minor(lines=lines, since=since, until=until, bucket="day", metered=metered)
    result.daily_cost_minor = [(day, daily.get(day, 0)) for day in days]

    on_demand_nodes = {key.node_id for key in metered if key.node_id is not None}
    # Reserved GPUs' own work, summed per node then labelled with the node's energy
    # source: grouping the rollup rows by the site's column joined node and site once per
    # row (a month of hourly rows per GPU).
    reserved_work = list(
        _reserved_rollups(contracts, since, until)
        .order_by()
        .values("node_id")
        .annotate(busy_ms=Sum("busy_ms"), energy_mj=Sum("energy_mj"))
    )
    source_of_node = dict(
        Node.objects.filter(
            pk__in=on_demand_nodes | {row["node_id"] for row in reserved_work}
        ).values_list("pk", "site__energy_source")
    )
    energy_by_source: dict[str, int] = defaultdict(int)
    for row in reserved_work:
        energy_by_source[source_of_node[row["node_id"]]] += int(row["energy_mj"] or 0)
        result.busy_ms += int(row["busy_ms"] or 0)
        result.energy_mj += int(row["energy_mj"] or 0)
    for key, quantities in metered.items():
        assert key.node_id is not None  # asked for by node
        energy_by_source[source_of_node[key.node_id]] += quantities.energy_mj
        result.busy_ms += quantities.busy_ms
        result.energy_mj += quantities.energy_mj
        result.input_tokens += quantities.input_tokens
        result.output_tokens += quantities.output_tokens
        if lines[key.line_id].kind == LineKind.INFERENCE:
            result.inference_energy_mj += quantities.energy_mj
    result.energy_mj_by_source = dict(energy_by_source)
    return result


def usage_chart(*, rows: list[UsageBucket], bucket: str) -> dict[str, Any]:
    """Busy GPU-hours and tokens per bucket as a Chart.js spec (``config.charts``): two
    scales, since an hour of a GPU and a million tokens share no unit."""
    labels = [
        f"{row.start:%d %b %H:%M}" if bucket == "hour" else f"{row.start.day} {row.start:%b}"
        for row in rows
    ]
    return chart_spec(
        kind="bar",
        labels=labels,
        series=[
            ChartSeries(
                label="Busy GPU time", values=[row.busy_gpu_hours for row in rows], unit="GPU-h"
            ),
            ChartSeries(
                label="Tokens",
                values=[row.input_tokens + row.output_tokens for row in rows],
                unit="tokens",
                axis="y1",
            ),
        ],
        x_title=f"{bucket.capitalize()} (UTC)",
        y_title="Busy GPU time (GPU-h)",
        y1_title="Tokens, input + output",
    )
