"""The buyer's dashboard: contracts, where their GPUs are, the month so far, keys, team."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Prefetch, Q

from accounts.models import Membership, Organization
from capacity.models import EnergySource, Region
from config.charts import ChartSeries, chart_spec
from contracts.models import OPEN_STATES, Allocation, Contract, ContractLine, LineApiKey
from contracts.money import minor_to_major
from contracts.terms import month_start
from contracts.usage import MonthToDate, month_to_date


@dataclass(frozen=True)
class GpuLocation:
    site_name: str
    country: str
    region: str
    energy_source: str
    gpus: int


# Chart geometry in SVG user units: one 8-wide bar every 10 units, 60 units tall.
BAR_PITCH = 10
CHART_HEIGHT = 60
DAYS_IN_LONGEST_MONTH = 31


@dataclass(frozen=True)
class ChartBar:
    day: datetime
    amount_minor: int
    x: int
    height: int


@dataclass(frozen=True)
class BuyerDashboard:
    contracts: list[Contract]
    locations: list[GpuLocation]
    month: MonthToDate
    chart: list[ChartBar]
    currency: str
    commitment_minor: int
    commitment_percent: int | None  # month-to-date cost / commitment, capped at 100
    api_keys: list[LineApiKey]
    team_size: int

    @property
    def cost_chart(self) -> dict[str, Any]:
        """The cost per day as a Chart.js spec (``config.charts``): days on x, money on y."""
        return chart_spec(
            kind="bar",
            labels=[f"{bar.day.day} {bar.day:%b}" for bar in self.chart],
            series=[
                ChartSeries(
                    label="Estimated cost",
                    values=[minor_to_major(bar.amount_minor) for bar in self.chart],
                    unit=self.currency,
                )
            ],
            x_title="Day (UTC)",
            y_title=f"Estimated cost ({self.currency})",
        )

    @property
    def chart_width(self) -> int:
        """Room for the longest month, so a bar keeps its width as the month goes on."""
        return DAYS_IN_LONGEST_MONTH * BAR_PITCH

    @property
    def energy_mix(self) -> list[tuple[str, Decimal, int]]:
        """(energy source label, kWh, percent) of the month's usage."""
        return energy_mix_percent(self.month)

    @property
    def gpus_held(self) -> int:
        return sum(location.gpus for location in self.locations)


def buyer_dashboard(*, organization: Organization, now: datetime) -> BuyerDashboard:
    """Everything the buyer section of the dashboard shows, in a fixed number of queries."""
    contracts = list(
        Contract.objects.for_organization(organization)
        .filter(state__in=OPEN_STATES)
        .prefetch_related(
            Prefetch(
                "lines",
                queryset=ContractLine.objects.current()
                .select_related("offer__site", "offer__gpu_model", "inference_product")
                .order_by("pk"),
            )
        )
        .order_by("-created_at")
    )
    held = (
        Allocation.objects.filter(line__contract__in=contracts, period__contains=now)
        .values(
            "gpu_device__node__site__name",
            "gpu_device__node__site__country",
            "gpu_device__node__site__region",
            "gpu_device__node__site__energy_source",
        )
        .annotate(gpus=Count("pk"))
        .order_by("-gpus", "gpu_device__node__site__name")
    )
    locations = [
        GpuLocation(
            site_name=row["gpu_device__node__site__name"],
            country=row["gpu_device__node__site__country"],
            region=Region(row["gpu_device__node__site__region"]).label,
            energy_source=EnergySource(row["gpu_device__node__site__energy_source"]).label,
            gpus=row["gpus"],
        )
        for row in held
    ]
    month = month_to_date(contracts=contracts, since=month_start(now), until=now)
    peak = max((amount for _, amount in month.daily_cost_minor), default=0)
    chart = [
        ChartBar(
            day=day,
            amount_minor=amount,
            x=index * BAR_PITCH,
            height=round(amount * CHART_HEIGHT / peak) if peak else 0,
        )
        for index, (day, amount) in enumerate(month.daily_cost_minor)
    ]
    commitment = sum(contract.monthly_commitment_minor for contract in contracts)
    percent = min(100, round(month.total_minor * 100 / commitment)) if commitment else None
    keys = list(
        LineApiKey.objects.filter(line__contract__in=contracts)
        .filter(Q(api_key__revoked_at__isnull=True))
        .select_related("api_key", "line__inference_product", "line__offer__gpu_model")
        .order_by("-created_at")[:10]
    )
    currencies = Counter(contract.currency for contract in contracts)
    return BuyerDashboard(
        contracts=contracts,
        locations=locations,
        month=month,
        chart=chart,
        currency=currencies.most_common(1)[0][0] if currencies else "USD",
        commitment_minor=commitment,
        commitment_percent=percent,
        api_keys=keys,
        team_size=Membership.objects.filter(organization=organization).count(),
    )


def energy_mix_percent(month: MonthToDate) -> list[tuple[str, Decimal, int]]:
    return [
        (EnergySource(source).label if source in EnergySource.values else source, kwh, percent)
        for source, kwh, percent in month.source_mix
    ]
