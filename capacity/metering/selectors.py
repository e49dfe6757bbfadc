"""Reads for pages, the API and finance: quarantine, poll state, availability, totals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from capacity.metering.availability import (
    MAINTENANCE_NOTICE,
    NOTHING,
    AvailabilityFigure,
    excluded_maintenance,
    gpu_availability,
    measured_until,
    month_start,
)
from capacity.metering.models import (
    GpuAvailabilityDay,
    HourlyUsage,
    InferenceDisagreementHour,
    NodeHealthDay,
    NodePollState,
    QuarantinedRecord,
    UsageRecord,
)
from capacity.models import GpuDevice, MaintenanceWindow, Node, NodeStatus, Offer
from config.charts import ChartSeries, chart_spec

AVAILABILITY_DAYS = 30
USAGE_QUANTITIES = ("busy_ms", "energy_mj", "input_tokens", "output_tokens", "requests")

# Which inference products each node serves, and at what throughput: contracts' answer
# (``contracts.selectors.served_inference_products``), registered at start-up so metering
# can bound inference tokens without importing contracts. None: nothing is served.
_served_products_loader: Callable[..., dict[int, dict[str, int]]] | None = None


def register_served_products(loader: Callable[..., dict[int, dict[str, int]]]) -> None:
    """Called once by the contracts app at start-up."""
    global _served_products_loader
    _served_products_loader = loader


def served_products(*, node_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """{node id: {product slug: tokens per GPU-second}} for the nodes that serve any
    product; without the contracts app no node serves anything (inference is refused)."""
    if _served_products_loader is None:
        return {}
    return _served_products_loader(node_ids=node_ids)


def node_poll_state(*, node: Node) -> NodePollState | None:
    return NodePollState.objects.filter(node=node).first()


def quarantined_records_for_node(*, node: Node, limit: int = 50) -> list[QuarantinedRecord]:
    """The node's most recent quarantined records, newest first (for the node page)."""
    return list(
        QuarantinedRecord.objects.filter(node=node)
        .only(
            "seq",
            "reason",
            "detail",
            "gpu_uuid",
            "window_start",
            "window_end",
            "received_at",
            "journal_epoch",
        )
        .order_by("-received_at", "-seq")[:limit]
    )


def quarantine_counts_for_node(*, node: Node) -> dict[str, int]:
    """Quarantined records of the node by reason."""
    rows = QuarantinedRecord.objects.filter(node=node).values("reason").annotate(n=Count("pk"))
    return {row["reason"]: row["n"] for row in rows}


def maintenance_exclusions(
    *, node_ids: Iterable[int], since: datetime, until: datetime
) -> dict[int, list[tuple[datetime, datetime]]]:
    """Maintenance excluded from availability, per node, clipped to ``[since, until)``:
    announced >= 7 days ahead, at most ``SLA_MAINTENANCE_ALLOWANCE_HOURS`` per calendar
    month (``availability.excluded_maintenance``, the rule in that module's docstring).

    Every figure reads the exclusion through here (node figures, search, contracts' SLA,
    settlement), so none can exclude more than another.
    """
    allowance = timedelta(hours=settings.SLA_MAINTENANCE_ALLOWANCE_HOURS)
    in_time: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    # From the start of since's month: earlier windows of that month use its allowance first.
    windows = MaintenanceWindow.objects.filter(
        node_id__in=list(node_ids),
        cancelled_at__isnull=True,
        period__overlap=(month_start(since), until),
    ).values_list("node_id", "period", "announced_at")
    for node_id, period, announced_at in windows:
        if announced_at <= period.lower - MAINTENANCE_NOTICE:
            in_time[node_id].append((period.lower, period.upper))
    exclusions: dict[int, list[tuple[datetime, datetime]]] = {}
    for node_id, node_windows in in_time.items():
        excluded = excluded_maintenance(node_windows, since=since, until=until, allowance=allowance)
        if excluded:
            exclusions[node_id] = excluded
    return exclusions


def measured_until_by_node(*, node_ids: Iterable[int], now: datetime) -> dict[int, datetime]:
    """Per node, the end of the minutes metering could have measured at ``now``
    (``availability.measured_until``: the node's last poll, at least one poll interval
    ago)."""
    node_ids = list(node_ids)
    last_polls = dict(
        NodePollState.objects.filter(node_id__in=node_ids).values_list("node_id", "last_poll_at")
    )
    interval = timedelta(seconds=settings.METERING_POLL_INTERVAL_SECONDS)
    return {
        node_id: measured_until(
            now=now, last_poll_at=last_polls.get(node_id), poll_interval=interval
        )
        for node_id in node_ids
    }


@dataclass(frozen=True)
class _AvailabilityInputs:
    """What the availability rule reads for some nodes over ``[since, until)``."""

    since: datetime
    until: datetime
    gpus: list[GpuDevice]
    bitmaps: dict[int, dict[date, str]]
    excluded: dict[int, list[tuple[datetime, datetime]]]
    measured: dict[int, datetime]


def _availability_inputs(nodes: list[Node], *, now: datetime, days: int) -> _AvailabilityInputs:
    until = now.replace(second=0, microsecond=0)
    since = until - timedelta(days=days)
    node_ids = [node.pk for node in nodes]
    gpus = list(GpuDevice.objects.filter(node_id__in=node_ids).only("pk", "node_id", "created_at"))
    bitmaps: dict[int, dict[date, str]] = defaultdict(dict)
    for gpu_id, day, minutes in GpuAvailabilityDay.objects.filter(
        gpu__in=gpus, day__gte=since.date(), day__lte=until.date()
    ).values_list("gpu_id", "day", "minutes"):
        bitmaps[gpu_id][day] = minutes
    return _AvailabilityInputs(
        since=since,
        until=until,
        gpus=gpus,
        bitmaps=bitmaps,
        excluded=maintenance_exclusions(node_ids=node_ids, since=since, until=until),
        measured=measured_until_by_node(node_ids=node_ids, now=now),
    )


def _gpu_figure(
    inputs: _AvailabilityInputs, node: Node, gpu: GpuDevice, *, since: datetime, until: datetime
) -> AvailabilityFigure:
    return gpu_availability(
        bitmaps=inputs.bitmaps[gpu.pk],
        counted_from=max(since, node.enrolled_at or node.created_at, gpu.created_at),
        until=until,
        measured_until=inputs.measured[node.pk],
        excluded=inputs.excluded.get(node.pk, ()),
    )


def availability_by_node(
    nodes: list[Node], *, now: datetime, days: int = AVAILABILITY_DAYS
) -> dict[int, AvailabilityFigure]:
    """Each node's figure over the ``days`` days before ``now`` (the rule of
    ``availability.gpu_availability``: from the node's enrollment and each GPU's creation,
    up to what metering could have measured, less announced maintenance)."""
    inputs = _availability_inputs(nodes, now=now, days=days)
    by_id = {node.pk: node for node in nodes}
    figures: dict[int, AvailabilityFigure] = dict.fromkeys(by_id, NOTHING)
    for gpu in inputs.gpus:
        figures[gpu.node_id] += _gpu_figure(
            inputs, by_id[gpu.node_id], gpu, since=inputs.since, until=inputs.until
        )
    return figures


def node_availability_by_day(
    *, node: Node, now: datetime, days: int
) -> dict[date, AvailabilityFigure]:
    """The node's figure for each UTC day of the ``days`` days up to ``now`` (today so
    far included), by the same rule as ``availability_by_node``."""
    first_day = now.astimezone(UTC).date() - timedelta(days=days - 1)
    start = datetime.combine(first_day, time.min, tzinfo=UTC)
    inputs = _availability_inputs([node], now=now, days=(now - start).days + 1)
    figures: dict[date, AvailabilityFigure] = {}
    for offset in range(days):
        day_start = start + timedelta(days=offset)
        day_end = min(day_start + timedelta(days=1), inputs.until)
        figures[day_start.date()] = sum(
            (_gpu_figure(inputs, node, gpu, since=day_start, until=day_end) for gpu in inputs.gpus),
            NOTHING,
        )
    return figures


def _availability_of_nodes(nodes: list[Node], *, now: datetime, days: int) -> AvailabilityFigure:
    return sum(availability_by_node(nodes, now=now, days=days).values(), NOTHING)


def node_availability(
    *, node: Node, now: datetime | None = None, days: int = AVAILABILITY_DAYS
) -> AvailabilityFigure:
    """Observed-available GPU-minutes of the node over the last ``days`` days."""
    return _availability_of_nodes([node], now=now or timezone.now(), days=days)


def offer_availability(
    *, offer: Offer, now: datetime | None = None, days: int = AVAILABILITY_DAYS
) -> AvailabilityFigure:
    """Availability of the GPUs an offer lists: the site's nodes of the offer's GPU model."""
    nodes = list(
        Node.objects.filter(site_id=offer.site_id, gpu_model_id=offer.gpu_model_id).exclude(
            status__in=(NodeStatus.PENDING, NodeStatus.RETIRED)
        )
    )
    return _availability_of_nodes(nodes, now=now or timezone.now(), days=days)


def usage_totals(*, node_ids: Iterable[int] | None = None) -> dict[str, int]:
    """Sums of stored usage records (all nodes, or ``node_ids``) plus their count."""
    records = UsageRecord.objects.all()
    if node_ids is not None:
        records = records.filter(node_id__in=list(node_ids))
    sums = records.aggregate(**{name: Sum(name) for name in USAGE_QUANTITIES}, records=Count("pk"))
    return {name: int(value or 0) for name, value in sums.items()}


def rollup_totals(*, node_ids: Iterable[int] | None = None) -> dict[str, int]:
    """Sums of the hourly rollups; equal to ``usage_totals`` when ingest is right."""
    rows = HourlyUsage.objects.all()
    if node_ids is not None:
        rows = rows.filter(node_id__in=list(node_ids))
    sums = rows.aggregate(
        **{name: Sum(name) for name in USAGE_QUANTITIES}, records=Sum("record_count")
    )
    return {name: int(value or 0) for name, value in sums.items()}


def inference_disagreements(
    *, node_ids: Sequence[int] | None = None
) -> QuerySet[InferenceDisagreementHour]:
    """Node-hours where the gateway's and the agents' token counts differ, newest first,
    with both figures (the view ``InferenceDisagreementHour`` computes them from
    ``InferenceRequest``); only ``node_ids``' when given."""
    rows = InferenceDisagreementHour.objects.select_related("node__site__organization")
    if node_ids is not None:
        rows = rows.filter(node_id__in=list(node_ids))
    return rows.order_by("-hour", "node_id")


HEALTH_HISTORY_DAYS = 14
_TENTH = Decimal("0.1")


def _mean(total: int, count: int, *, scale: int = 1) -> Decimal:
    return (Decimal(total) / Decimal(count * scale)).quantize(_TENTH, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class NodeHealthDayRow:
    """One UTC day of a node's health; None where nothing was measured that day."""

    day: date
    health_samples: int
    utilization_pct: Decimal | None  # mean of the health samples' GPU utilization
    temperature_c_avg: Decimal | None  # mean of the samples' hottest GPU
    temperature_c_max: int | None  # the day's hottest reading
    power_w_avg: Decimal | None  # mean draw of all GPUs together
    availability_pct: Decimal | None  # the availability rule, for this day alone


@dataclass(frozen=True)
class NodeHealthHistory:
    days: list[NodeHealthDayRow]

    @property
    def has_data(self) -> bool:
        return any(row.health_samples or row.availability_pct is not None for row in self.days)

    def _labels(self) -> list[str]:
        return [f"{row.day:%Y-%m-%d}" for row in self.days]

    @property
    def percent_chart(self) -> dict[str, Any]:
        """Utilization and availability per day, in percent (Chart.js spec)."""
        return chart_spec(
            kind="line",
            labels=self._labels(),
            series=[
                ChartSeries(
                    label="GPU utilization",
                    values=[_or_blank(row.utilization_pct) for row in self.days],
                    unit="%",
                ),
                ChartSeries(
                    label="Availability",
                    values=[_or_blank(row.availability_pct) for row in self.days],
                    unit="%",
                ),
            ],
            x_title="Day (UTC)",
            y_title="Percent (%)",
        )

    @property
    def thermal_chart(self) -> dict[str, Any]:
        """Hottest-GPU temperature and the node's power per day (two scales)."""
        return chart_spec(
            kind="line",
            labels=self._labels(),
            series=[
                ChartSeries(
                    label="Temperature, hottest GPU (mean)",
                    values=[_or_blank(row.temperature_c_avg) for row in self.days],
                    unit="°C",
                ),
                ChartSeries(
                    label="Power, all GPUs (mean)",
                    values=[_or_blank(row.power_w_avg) for row in self.days],
                    unit="W",
                    axis="y1",
                ),
            ],
            x_title="Day (UTC)",
            y_title="Temperature (°C)",
            y1_title="Power (W)",
        )


def _or_blank(value: Decimal | None) -> Decimal | str:
    """A day without data is a gap in the line (charts.js reads "" as no value)."""
    return "" if value is None else value


def node_health_history(
    *, node: Node, now: datetime | None = None, days: int = HEALTH_HISTORY_DAYS
) -> NodeHealthHistory:
    """The node's health per UTC day over the last ``days`` days, today included: the
    agent's health samples (``NodeHealthDay``) and the day's availability."""
    now = now or timezone.now()
    availability = node_availability_by_day(node=node, now=now, days=days)
    health_days = {
        row.day: row for row in NodeHealthDay.objects.filter(node=node, day__gte=min(availability))
    }
    rows = []
    for day, figure in sorted(availability.items()):
        health = health_days.get(day)
        samples = health.samples if health else 0
        rows.append(
            NodeHealthDayRow(
                day=day,
                health_samples=samples,
                utilization_pct=_mean(health.utilization_pct_sum, samples) if health else None,
                temperature_c_avg=_mean(health.temperature_c_sum, samples) if health else None,
                temperature_c_max=health.temperature_c_max if health else None,
                power_w_avg=_mean(health.power_mw_sum, samples, scale=1000) if health else None,
                availability_pct=figure.percent,
            )
        )
    return NodeHealthHistory(days=rows)
