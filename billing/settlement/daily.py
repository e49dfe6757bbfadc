"""The partner's earnings per UTC day, node and site, for one service month.

Attribution splits each paid invoice line over nodes for the whole month; a partner also
wants to see *when* the money was earned. Each of the partner's attributions (its share,
exactly as settled) is spread over the days of its month by the same billable usage that
weighed it between nodes, read per node and per day (``contracts.billable_usage`` with
``bucket="day"``): GPU-seconds held for reserved lines, their SLA credits and on-demand
GPU lines (instances), tokens for metered lines. The split is ``split_largest_remainder``, so the
days of an attribution add up to its share to the cent; what has no daily usage (a line
no day weighs) stays on the month (``day`` None). A node's figure per GPU is its share
divided by its GPU count (attribution, like inference metering, is per node).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from accounts.models import Organization
from billing.models import Attribution, LineKind
from billing.money import minor_to_major
from billing.periods import month_bounds
from billing.settlement.attribution import _line_meter, _metered_of, split_largest_remainder
from capacity.models import Node
from config.charts import ChartSeries, chart_spec
from contracts.billable_usage import (
    MeteredQuantities,
    held_gpu_seconds,
    metered_quantities,
)

# Lines weighed by the GPU-seconds their allocations held (reservations, instances).
_RESERVED_KINDS = (LineKind.RESERVED, LineKind.SLA_CREDIT, LineKind.ON_DEMAND_GPU)


@dataclass(frozen=True)
class DailyEarning:
    day: date | None  # None: earned over the month, no day weighs it
    site: str
    node: str
    gpu_count: int
    partner_share_minor: int

    @property
    def per_gpu_minor(self) -> int:
        """The node's share per GPU, to the cent half-up (shown, never paid)."""
        return per_gpu_minor(self.partner_share_minor, self.gpu_count)


def per_gpu_minor(amount_minor: int, gpu_count: int) -> int:
    if gpu_count <= 0:
        return 0
    return int((Decimal(amount_minor) / gpu_count).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def earnings_by_day(*, partner: Organization, currency: str, month: date) -> list[DailyEarning]:
    """The partner's share of ``month`` per (day, site, node), days in order (the month's
    undated rest last), then site and node by name."""
    attributions = list(
        Attribution.objects.filter(
            partner=partner, currency=currency, service_month=month, node__isnull=False
        )
        .select_related("invoice_line", "node", "site")
        .order_by("pk")
    )
    start, end = month_bounds(month)
    reserved_ids = sorted(
        {
            a.invoice_line.contract_line_id
            for a in attributions
            if a.invoice_line.kind in _RESERVED_KINDS
            and not _line_meter(a.invoice_line)
            and a.invoice_line.contract_line_id
        }
    )
    metered_ids = sorted(
        {
            a.invoice_line.contract_line_id
            for a in attributions
            if _line_meter(a.invoice_line) and a.invoice_line.contract_line_id
        }
    )
    reserved = (
        held_gpu_seconds(start=start, end=end, line_ids=reserved_ids, by_node=True, bucket="day")
        if reserved_ids
        else {}
    )
    metered = (
        metered_quantities(start=start, end=end, line_ids=metered_ids, by_node=True, bucket="day")
        if metered_ids
        else {}
    )
    reserved_days: dict[tuple[int, int], dict[date, Decimal]] = defaultdict(dict)
    for key, seconds in reserved.items():
        assert key.node_id is not None and key.start is not None  # asked by node and day
        reserved_days[key.line_id, key.node_id][_day(key.start)] = seconds
    metered_days: dict[tuple[int, int], dict[date, MeteredQuantities]] = defaultdict(dict)
    for key, usage in metered.items():
        assert key.node_id is not None and key.start is not None
        metered_days[key.line_id, key.node_id][_day(key.start)] = usage
    totals: dict[tuple[date | None, int], int] = defaultdict(int)
    nodes: dict[int, Node] = {}
    sites: dict[int, str] = {}
    for attribution in attributions:
        line = attribution.invoice_line
        node_id = attribution.node_id
        assert node_id is not None
        assert attribution.node is not None
        nodes[node_id] = attribution.node
        sites[node_id] = attribution.site.name if attribution.site else ""
        weights: dict[date, Decimal] = {}
        if line.contract_line_id and line.kind in _RESERVED_KINDS and not _line_meter(line):
            weights = reserved_days[line.contract_line_id, node_id]
        elif line.contract_line_id and (meter := _line_meter(line)):
            weights = {
                day: Decimal(_metered_of(usage, meter))
                for day, usage in metered_days[line.contract_line_id, node_id].items()
            }
        parts = split_largest_remainder(attribution.partner_share_minor, weights)
        if not parts:
            totals[None, node_id] += attribution.partner_share_minor
        for day, part in parts.items():
            totals[day, node_id] += part
    rows = [
        DailyEarning(
            day=day,
            site=sites[node_id],
            node=nodes[node_id].name,
            gpu_count=nodes[node_id].gpu_count,
            partner_share_minor=amount,
        )
        for (day, node_id), amount in totals.items()
        if amount
    ]
    return sorted(rows, key=lambda row: (row.day is None, row.day or date.min, row.site, row.node))


def earning_months(*, partner: Organization, currency: str) -> list[date]:
    """Service months with the partner's attributions, newest first."""
    return list(
        Attribution.objects.filter(partner=partner, currency=currency, node__isnull=False)
        .values_list("service_month", flat=True)
        .distinct()
        .order_by("-service_month")
    )


@dataclass(frozen=True)
class MonthEarnings:
    """A month's daily earnings and their totals per day, node and site."""

    month: date
    currency: str
    rows: list[DailyEarning]

    @property
    def total_minor(self) -> int:
        return sum(row.partner_share_minor for row in self.rows)

    @property
    def per_day(self) -> list[tuple[date | None, int]]:
        totals: dict[date | None, int] = defaultdict(int)
        for row in self.rows:
            totals[row.day] += row.partner_share_minor
        return sorted(totals.items(), key=lambda item: (item[0] is None, item[0] or date.min))

    @property
    def per_node(self) -> list[DailyEarning]:
        """Each node's month (``day`` None), with its share per GPU."""
        totals: dict[tuple[str, str, int], int] = defaultdict(int)
        for row in self.rows:
            totals[row.site, row.node, row.gpu_count] += row.partner_share_minor
        return [
            DailyEarning(None, site, node, gpus, amount)
            for (site, node, gpus), amount in sorted(totals.items())
        ]

    @property
    def per_site(self) -> list[tuple[str, int]]:
        totals: dict[str, int] = defaultdict(int)
        for row in self.rows:
            totals[row.site] += row.partner_share_minor
        return sorted(totals.items())

    @property
    def day_chart(self) -> dict[str, Any]:
        """Your share per day (Chart.js spec), money on the value axis."""
        days = [(day, amount) for day, amount in self.per_day if day is not None]
        return chart_spec(
            kind="bar",
            labels=[f"{day:%Y-%m-%d}" for day, _ in days],
            series=[
                ChartSeries(
                    label="Your share",
                    values=[minor_to_major(amount) for _, amount in days],
                    unit=self.currency,
                )
            ],
            x_title="Day (UTC)",
            y_title=f"Your share ({self.currency})",
        )


def month_earnings(*, partner: Organization, currency: str, month: date) -> MonthEarnings:
    return MonthEarnings(
        month=month,
        currency=currency,
        rows=earnings_by_day(partner=partner, currency=currency, month=month),
    )
