"""Usage and cost of a buyer's contracts, from metering's tables.

Reserved work is read from the hourly rollups of the contract's allocated GPUs (kind
``allocation``, hours that overlap an allocation); on-demand work from the usage records
attributed to the API keys of the contract's lines. Without the metering app installed
every figure is zero. Energy: 1 kWh = 3.6e9 mJ.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.apps import apps
from django.db.models import Exists, OuterRef, Q, Sum
from django.db.models.functions import Trunc

from capacity.models import Node
from contracts.models import Allocation, Contract, ContractLine, LineApiKey, LineKind
from contracts.money import busy_gpu_charge, reserved_charge, round_money, token_charge

MJ_PER_KWH = Decimal(3_600_000_000)
BUCKETS = ("hour", "day")
QUANTITIES = ("busy_ms", "energy_mj", "input_tokens", "output_tokens", "requests")


@dataclass
class UsageBucket:
    start: datetime
    busy_ms: int = 0
    energy_mj: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0

    @property
    def busy_gpu_hours(self) -> Decimal:
        return (Decimal(self.busy_ms) / Decimal(3_600_000)).quantize(Decimal("0.0001"))

    @property
    def energy_kwh(self) -> Decimal:
        return (Decimal(self.energy_mj) / MJ_PER_KWH).quantize(Decimal("0.0001"))

    def add(self, row: dict) -> None:
        for name in QUANTITIES:
            setattr(self, name, getattr(self, name) + int(row.get(name) or 0))


def metering_installed() -> bool:
    return apps.is_installed("capacity.metering")


def _reserved_rollups(contracts: list[Contract], since: datetime, until: datetime):  # type: ignore[no-untyped-def]
    HourlyUsage = apps.get_model("metering", "HourlyUsage")
    hour_end = OuterRef("hour") + timedelta(hours=1)
    held = Allocation.objects.filter(
        line__contract__in=contracts, gpu_device=OuterRef("gpu_id")
    ).filter(
        Q(period__contains=OuterRef("hour"))
        | Q(period__startswith__gt=OuterRef("hour"), period__startswith__lt=hour_end)
    )
    # The GPUs the contracts ever held, as a plain IN list too: it lets the planner start
    # from those GPUs (rollup index on gpu) instead of scanning the period's rollups.
    held_gpus = Allocation.objects.filter(line__contract__in=contracts).values("gpu_device_id")
    return HourlyUsage.objects.filter(
        workload_kind="allocation", hour__gte=since, hour__lt=until, gpu_id__in=held_gpus
    ).filter(Exists(held))


def _keyed_records(contracts: list[Contract], since: datetime, until: datetime):  # type: ignore[no-untyped-def]
    UsageRecord = apps.get_model("metering", "UsageRecord")
    keys = LineApiKey.objects.filter(line__contract__in=contracts).values("api_key_id")
    return UsageRecord.objects.filter(
        api_key_id__in=keys, window_start__gte=since, window_start__lt=until
    )


def usage_buckets(
    *, contract: Contract, bucket: str, since: datetime, until: datetime
) -> list[UsageBucket]:
    """The contract's usage per UTC hour or day in ``[since, until)``, oldest first."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}")
    if not metering_installed():
        return []
    sums = {name: Sum(name) for name in QUANTITIES}
    buckets: dict[datetime, UsageBucket] = {}
    sources = (
        _reserved_rollups([contract], since, until).annotate(
            bucket=Trunc("hour", bucket, tzinfo=UTC)
        ),
        _keyed_records([contract], since, until).annotate(
            bucket=Trunc("window_start", bucket, tzinfo=UTC)
        ),
    )
    for rows in sources:
        for row in rows.order_by().values("bucket").annotate(**sums):
            buckets.setdefault(row["bucket"], UsageBucket(start=row["bucket"])).add(row)
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


def month_to_date(*, contracts: list[Contract], since: datetime, until: datetime) -> MonthToDate:
    """Estimated cost (exact per line, rounded once per line) and usage in ``[since, until)``.

    Reserved lines cost every held hour whether used or not; on-demand lines their
    attributed busy time or tokens.
    """
    result = MonthToDate(since=since, until=until)
    days = _days(since, until)
    daily_exact: dict[datetime, Decimal] = defaultdict(Decimal)
    lines = list(
        ContractLine.objects.filter(contract__in=contracts)
        .select_related("offer__site", "offer__gpu_model", "inference_product")
        .order_by("contract_id", "pk")
    )
    # Held GPUs per line and period: a line's GPUs usually share one period, so the cost
    # is computed once per period, not once per GPU.
    held: dict[int, Counter[tuple[datetime, datetime]]] = defaultdict(Counter)
    for held_line_id, period in Allocation.objects.filter(
        line__in=lines, period__overlap=(since, until)
    ).values_list("line_id", "period"):
        held[held_line_id][(period.lower, period.upper)] += 1
    keyed_by_line_day: dict[tuple[int, datetime], dict] = {}
    if metering_installed():
        keyed = (
            _keyed_records(contracts, since, until)
            .annotate(day=Trunc("window_start", "day", tzinfo=UTC))
            .order_by()
            .values("api_key_id", "day", "node__site__energy_source")
            .annotate(**{name: Sum(name) for name in QUANTITIES})
        )
        line_of_key = dict(
            LineApiKey.objects.filter(line__in=lines).values_list("api_key_id", "line_id")
        )
        for row in keyed:
            line_id = line_of_key.get(row["api_key_id"])
            if line_id is None:
                continue
            slot = keyed_by_line_day.setdefault((line_id, row["day"]), defaultdict(int))
            for name in QUANTITIES:
                slot[name] += int(row[name] or 0)
            result.energy_mj_by_source[row["node__site__energy_source"]] = (
                result.energy_mj_by_source.get(row["node__site__energy_source"], 0)
                + int(row["energy_mj"] or 0)
            )
            result.input_tokens += int(row["input_tokens"] or 0)
            result.output_tokens += int(row["output_tokens"] or 0)
            result.busy_ms += int(row["busy_ms"] or 0)
            result.energy_mj += int(row["energy_mj"] or 0)
            if row["input_tokens"] or row["output_tokens"]:
                result.inference_energy_mj += int(row["energy_mj"] or 0)
        # Summed per node, then labelled with the node's energy source: grouping the
        # rollup rows by the site's column joined node and site once per row (a month of
        # hourly rows per GPU).
        reserved = list(
            _reserved_rollups(contracts, since, until)
            .order_by()
            .values("node_id")
            .annotate(busy_ms=Sum("busy_ms"), energy_mj=Sum("energy_mj"))
        )
        source_of_node = dict(
            Node.objects.filter(pk__in=[row["node_id"] for row in reserved]).values_list(
                "pk", "site__energy_source"
            )
        )
        for row in reserved:
            source = source_of_node[row["node_id"]]
            result.energy_mj_by_source[source] = result.energy_mj_by_source.get(source, 0) + int(
                row["energy_mj"] or 0
            )
            result.busy_ms += int(row["busy_ms"] or 0)
            result.energy_mj += int(row["energy_mj"] or 0)
    for line in lines:
        exact = Decimal(0)
        for day in days:
            day_end = min(day + timedelta(days=1), until)
            day_exact = Decimal(0)
            if line.kind == LineKind.RESERVED:
                for (lower, upper), gpus in held.get(line.pk, {}).items():
                    start, end = max(lower, day), min(upper, day_end)
                    if end > start:
                        day_exact += reserved_charge(
                            gpu_count=gpus,
                            start=start,
                            end=end,
                            rate=line.price_per_gpu_hour,  # type: ignore[arg-type]
                        )
            else:
                usage = keyed_by_line_day.get((line.pk, day))
                if usage and line.kind == LineKind.ON_DEMAND_GPU:
                    rate = line.price_per_gpu_hour
                    if rate is None:  # excluded by the line's check constraint
                        raise TypeError("on-demand GPU line without price_per_gpu_hour")
                    day_exact += busy_gpu_charge(busy_ms=usage["busy_ms"], rate=rate)
                elif usage:
                    day_exact += token_charge(
                        tokens=usage["input_tokens"],
                        price_per_million=line.input_price_per_million_tokens,  # type: ignore[arg-type]
                    ) + token_charge(
                        tokens=usage["output_tokens"],
                        price_per_million=line.output_price_per_million_tokens,  # type: ignore[arg-type]
                    )
            daily_exact[day] += day_exact
            exact += day_exact
        result.line_costs.append(LineCost(line=line, amount_minor=round_money(exact)))
    result.daily_cost_minor = [(day, round_money(daily_exact[day])) for day in days]
    return result
