"""Reads for pages, the API and finance: quarantine, poll state, availability, totals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

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
    NodePollState,
    QuarantinedRecord,
    UsageRecord,
)
from capacity.models import GpuDevice, MaintenanceWindow, Node, NodeStatus, Offer

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


def availability_by_node(
    nodes: list[Node], *, now: datetime, days: int = AVAILABILITY_DAYS
) -> dict[int, AvailabilityFigure]:
    """Each node's figure over the ``days`` days before ``now`` (the rule of
    ``availability.gpu_availability``: from the node's enrollment and each GPU's creation,
    up to what metering could have measured, less announced maintenance)."""
    until = now.replace(second=0, microsecond=0)
    since = until - timedelta(days=days)
    by_id = {node.pk: node for node in nodes}
    gpus = list(GpuDevice.objects.filter(node_id__in=by_id).only("pk", "node_id", "created_at"))
    bitmaps: dict[int, dict] = defaultdict(dict)
    for gpu_id, day, minutes in GpuAvailabilityDay.objects.filter(
        gpu__in=gpus, day__gte=since.date(), day__lte=until.date()
    ).values_list("gpu_id", "day", "minutes"):
        bitmaps[gpu_id][day] = minutes
    excluded = maintenance_exclusions(node_ids=by_id, since=since, until=until)
    measured = measured_until_by_node(node_ids=by_id, now=now)
    figures: dict[int, AvailabilityFigure] = dict.fromkeys(by_id, NOTHING)
    for gpu in gpus:
        node = by_id[gpu.node_id]
        figures[node.pk] += gpu_availability(
            bitmaps=bitmaps[gpu.pk],
            counted_from=max(since, node.enrolled_at or node.created_at, gpu.created_at),
            until=until,
            measured_until=measured[node.pk],
            excluded=excluded.get(node.pk, ()),
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
