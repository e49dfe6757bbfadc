"""Reads of the capacity domain: list pages, detail pages, the partner overview, seams.

Every function takes the organization (or an object already scoped to it) and returns
querysets with the joins their callers render, so list pages run a fixed number of queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import cast

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce

from accounts.models import Organization
from capacity.models import (
    GpuDevice,
    GpuModel,
    Interconnect,
    Node,
    NodeStatus,
    NodeWindow,
    Offer,
    Site,
)


def site_list(*, organization: Organization) -> QuerySet[Site]:
    """The organization's sites with their node and GPU counts (retired nodes excluded)."""
    active = ~Q(nodes__status=NodeStatus.RETIRED)
    sites = cast(QuerySet[Site], Site.objects.for_organization(organization))
    return sites.annotate(
        node_count=Count("nodes", filter=active),
        gpu_total=Coalesce(Sum("nodes__gpu_count", filter=active), 0),
    ).order_by("name", "pk")


def node_list(
    *, organization: Organization, site: Site | None = None, status: str | None = None
) -> QuerySet[Node]:
    qs = (
        cast(QuerySet[Node], Node.objects.for_organization(organization))
        .select_related("site", "gpu_model")
        .order_by("site__name", "name", "pk")
    )
    if site is not None:
        qs = qs.filter(site=site)
    if status:
        qs = qs.filter(status=status)
    return qs


def node_gpus(*, node: Node) -> QuerySet[GpuDevice]:
    return node.gpus.order_by("index")


def node_windows(*, node: Node, include_cancelled: bool = False) -> QuerySet[NodeWindow]:
    qs = node.windows.order_by("period", "pk")
    return qs if include_cancelled else qs.filter(cancelled_at__isnull=True)


def offer_list(*, organization: Organization, active_only: bool = False) -> QuerySet[Offer]:
    qs = (
        cast(QuerySet[Offer], Offer.objects.for_organization(organization))
        .select_related("site", "gpu_model")
        .order_by("site__name", "gpu_model__name", "pk")
    )
    return qs.filter(is_active=True) if active_only else qs


def site_gpu_capacity(*, site: Site, gpu_model: GpuModel) -> int:
    """GPUs of ``gpu_model`` on the site's non-retired nodes: the most an offer may list."""
    total = (
        Node.objects.active()
        .filter(site=site, gpu_model=gpu_model)
        .aggregate(total=Coalesce(Sum("gpu_count"), 0))["total"]
    )
    return int(total)


def gpu_model_for_reported_name(reported: str) -> GpuModel | None:
    """The catalog model whose family appears in a driver-reported name, if exactly one."""
    upper = reported.upper()
    matches = [model for model in GpuModel.objects.all() if model.family.upper() in upper]
    return matches[0] if len(matches) == 1 else None


@dataclass(frozen=True)
class ServedProduct:
    """An inference product a node serves, as its partner sees it on the node page."""

    name: str
    slug: str
    input_price_per_million_tokens: Decimal
    output_price_per_million_tokens: Decimal
    currency: str
    is_active: bool  # False: no longer sold, still opted in


# The inference products a node serves: contracts owns them and registers its query in
# ``ContractsConfig.ready`` (capacity must not import contracts).
_served_products_loader: Callable[[Node], list[ServedProduct]] | None = None


def register_served_products(loader: Callable[[Node], list[ServedProduct]]) -> None:
    """Called once by the app that owns inference products (contracts), at start-up."""
    global _served_products_loader
    _served_products_loader = loader


def node_served_products(*, node: Node) -> list[ServedProduct]:
    """The inference products ``node`` is opted in to serve, by name; none without contracts."""
    return [] if _served_products_loader is None else _served_products_loader(node)


@dataclass(frozen=True)
class NodeWorkload:
    """A workload on one of a node's GPUs, as its partner sees it: what kind, in what
    state since when, and why it failed; never the buyer, the image, the environment or
    the SSH key (DESIGN.md: a partner sees what runs on their GPUs, never who the buyer
    is)."""

    gpu_index: int
    gpu_uuid: str
    kind: str  # "Instance", "Container", "Model deployment"
    state: str  # the state's label
    is_failure: bool
    since: datetime
    reason: str  # failed or lost: why; otherwise blank


# What runs on a node's GPUs: contracts owns workloads and registers its query in
# ``ContractsConfig.ready`` (capacity must not import contracts).
_node_workloads_loader: Callable[[Node, datetime], list[NodeWorkload]] | None = None


def register_node_workloads(loader: Callable[[Node, datetime], list[NodeWorkload]]) -> None:
    """Called once by the app that owns workloads (contracts), at start-up."""
    global _node_workloads_loader
    _node_workloads_loader = loader


def node_workloads(*, node: Node, now: datetime) -> list[NodeWorkload]:
    """The workloads on ``node``'s GPUs now and its recent failures; none without
    contracts."""
    return [] if _node_workloads_loader is None else _node_workloads_loader(node, now)


# Checks registered by apps above capacity (contracts registers its allocation query in
# ``ContractsConfig.ready``), so capacity asks without importing them.
_future_allocation_checks: list[Callable[[Node], bool]] = []


def register_future_allocation_check(check: Callable[[Node], bool]) -> None:
    """Called once by an app that holds reservations (contracts), at start-up."""
    if check not in _future_allocation_checks:
        _future_allocation_checks.append(check)


# How many GPUs of an offer reservations hold at once from a moment on, registered by
# contracts in ``ContractsConfig.ready`` (capacity must not import contracts).
_offer_commitments: list[Callable[[Offer, datetime], int]] = []


def register_offer_commitment(commitment: Callable[[Offer, datetime], int]) -> None:
    """Called once by an app that holds reservations (contracts), at start-up."""
    if commitment not in _offer_commitments:
        _offer_commitments.append(commitment)


def offer_committed_gpus(offer: Offer, *, now: datetime) -> int:
    """The most GPUs of ``offer`` that reservations hold at one moment from ``now`` on."""
    return max((commitment(offer, now) for commitment in _offer_commitments), default=0)


def node_has_future_allocations(node: Node) -> bool:
    """Whether any reservation holds one of the node's GPUs now or later.

    Capacity must not import contracts (data flows capacity → contracts → billing):
    contracts registers the query with ``register_future_allocation_check``.
    """
    return any(check(node) for check in _future_allocation_checks)


@dataclass(frozen=True)
class PartnerOverview:
    """Headline counts of a partner's fleet, for the dashboard."""

    site_count: int
    node_count: int  # non-retired
    gpu_count: int  # GPUs on non-retired nodes
    active_offer_count: int
    nodes_by_status: dict[str, int] = field(default_factory=dict)  # every status, zeros included


def partner_overview(organization: Organization) -> PartnerOverview:
    """Counts for the dashboard in three queries."""
    by_status = dict(
        Node.objects.for_organization(organization)
        .values_list("status")
        .annotate(count=Count("pk"))
        .values_list("status", "count")
    )
    gpu_count = (
        Node.objects.for_organization(organization)
        .exclude(status=NodeStatus.RETIRED)
        .aggregate(total=Coalesce(Sum("gpu_count"), 0))["total"]
    )
    counts = Site.objects.for_organization(organization).aggregate(
        sites=Count("pk", distinct=True),
        offers=Count("offers", filter=Q(offers__is_active=True), distinct=True),
    )
    nodes_by_status = {status.value: by_status.get(status.value, 0) for status in NodeStatus}
    return PartnerOverview(
        site_count=counts["sites"],
        node_count=sum(n for status, n in nodes_by_status.items() if status != NodeStatus.RETIRED),
        gpu_count=int(gpu_count),
        active_offer_count=counts["offers"],
        nodes_by_status=nodes_by_status,
    )


@dataclass(frozen=True)
class OfferHardware:
    """One kind of server behind an offer: the nodes of the offer's site and GPU model that
    share these figures. What buyers see; never a node's name or its partner. Blank or
    None = the partner did not state it."""

    node_count: int
    gpus_per_node: int
    cpu_cores: int
    cpu_model: str
    ram_gib: int
    disk_gib: int | None
    network_gbps: int | None
    interconnect: str  # label, e.g. "NVLink"; blank when not stated
    driver_version: str
    cuda_version: str


def offer_hardware(*, offer: Offer) -> list[OfferHardware]:
    """The servers behind ``offer`` (non-retired nodes of its site and GPU model), grouped
    by identical figures, most nodes first: one query."""
    labels = dict(Interconnect.choices)
    fields = (
        "gpu_count",
        "cpu_cores",
        "cpu_model",
        "ram_gib",
        "disk_gib",
        "network_gbps",
        "interconnect",
        "driver_version",
        "cuda_version",
    )
    rows = (
        Node.objects.filter(site_id=offer.site_id, gpu_model_id=offer.gpu_model_id)
        .exclude(status=NodeStatus.RETIRED)
        .values(*fields)
        .annotate(node_count=Count("pk"))
        .order_by("-node_count", "-gpu_count", "cpu_model")
    )
    return [
        OfferHardware(
            node_count=row["node_count"],
            gpus_per_node=row["gpu_count"],
            cpu_cores=row["cpu_cores"],
            cpu_model=row["cpu_model"],
            ram_gib=row["ram_gib"],
            disk_gib=row["disk_gib"],
            network_gbps=row["network_gbps"],
            interconnect=labels.get(row["interconnect"], ""),
            driver_version=row["driver_version"],
            cuda_version=row["cuda_version"],
        )
        for row in rows
    ]
