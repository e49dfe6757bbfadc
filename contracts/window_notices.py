"""Partners' maintenance and curtailment windows over a buyer's reserved GPUs: what the
contract page lists, and the email the buyer's members get, once per window.

A window (``capacity.models.NodeWindow``) affects a contract when it overlaps an
allocation of one of the contract's lines on the window's node. The buyer is told when,
where (node and site, as the contract page already shows them), how many of its GPUs the
window covers, and what it means for the SLA, per GPU: how much is excluded (maintenance
announced at least 7 days ahead, up to the monthly allowance: metering's rule, read from
``capacity.metering.selectors.maintenance_exclusions``) and how much counts as downtime
(the rest of the window, and all of a curtailment) unless the GPUs stay available.

A buyer is told only of its own contracts and GPUs; nothing here names another buyer.
Capacity calls ``notify_buyers_of_window`` on commit of every window scheduled or
cancelled (``capacity.services.register_window_listener``, in ``ContractsConfig.ready``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.db import transaction
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from accounts.models import Membership
from capacity.metering.selectors import maintenance_exclusions
from capacity.models import NodeWindow, WindowKind
from contracts import emails
from contracts.models import (
    OPEN_STATES,
    Allocation,
    Contract,
    WindowNotice,
    WindowNoticeEvent,
)

# The most windows a contract page lists (the soonest first).
CONTRACT_PAGE_WINDOWS = 50


def hours_text(length: timedelta) -> str:
    """A duration in hours and minutes, e.g. ``8 h`` or ``1,234 h 30 min``."""
    hours, minutes = divmod(int(length.total_seconds()) // 60, 60)
    return f"{hours:,} h {minutes} min" if minutes else f"{hours:,} h"


def sla_split(
    window: NodeWindow, *, since: datetime, until: datetime
) -> tuple[timedelta, timedelta]:
    """Per GPU, the part of ``window`` inside ``[since, until)`` (a contract's hold on the
    node) that the SLA excludes, and the part it counts (as downtime unless the GPUs are
    observed available): metering's exclusion rule."""
    since, until = max(since, window.start), min(until, window.end)
    if until <= since:
        return timedelta(0), timedelta(0)
    if window.kind != WindowKind.MAINTENANCE:
        return timedelta(0), until - since
    pieces = maintenance_exclusions(node_ids=[window.node_id], since=since, until=until)
    # Other windows of the node may fall inside [since, until) too: count this one's part.
    excluded = sum(
        (
            min(end, window.end) - max(start, window.start)
            for start, end in pieces.get(window.node_id, ())
            if start < window.end and window.start < end
        ),
        timedelta(0),
    )
    return excluded, until - since - excluded


def _span(periods: list[DateTimeTZRange]) -> tuple[datetime, datetime]:
    return min(period.lower for period in periods), max(period.upper for period in periods)


@dataclass(frozen=True)
class WindowImpact:
    """One window over a contract's reserved GPUs, as its buyer sees it."""

    window: NodeWindow
    gpu_count: int  # the contract's GPUs on the window's node during the window
    excluded: timedelta  # per GPU, excluded from the SLA
    downtime: timedelta  # per GPU, counted by the SLA: downtime unless available

    @property
    def excluded_text(self) -> str:
        return hours_text(self.excluded)

    @property
    def downtime_text(self) -> str:
        return hours_text(self.downtime)


def _overlaps(period: DateTimeTZRange, window: NodeWindow) -> bool:
    return period.lower < window.end and window.start < period.upper


def contract_windows(*, contract: Contract, now: datetime) -> list[WindowImpact]:
    """Windows current or to come over GPUs the contract holds, soonest first."""
    periods_by_node: dict[int, list[tuple[int, DateTimeTZRange]]] = defaultdict(list)
    for gpu_id, node_id, period in Allocation.objects.filter(
        line__contract=contract,
        period__overlap=DateTimeTZRange(now, None, "[)"),
        workload__isnull=True,  # reservations: an instance's buyer chose the moment
    ).values_list("gpu_device_id", "gpu_device__node_id", "period"):
        periods_by_node[node_id].append((gpu_id, period))
    if not periods_by_node:
        return []
    windows = (
        NodeWindow.objects.filter(
            node_id__in=list(periods_by_node),
            cancelled_at__isnull=True,
            period__overlap=DateTimeTZRange(now, None, "[)"),
        )
        .select_related("node__site")
        .order_by("period", "pk")[:CONTRACT_PAGE_WINDOWS]
    )
    impacts = []
    for window in windows:
        held = [(gpu, p) for gpu, p in periods_by_node[window.node_id] if _overlaps(p, window)]
        if held:
            since, until = _span([period for _, period in held])
            excluded, downtime = sla_split(window, since=since, until=until)
            gpus = len({gpu for gpu, _ in held})
            impacts.append(WindowImpact(window, gpus, excluded, downtime))
    return impacts


@dataclass(frozen=True)
class AffectedContract:
    """A contract holding GPUs of a window's node during it, for its buyer's email."""

    contract_id: int
    reference: str
    gpu_count: int
    excluded: str  # per GPU, as ``hours_text`` writes it
    downtime: str


def _affected_by_buyer(window: NodeWindow) -> dict[int, list[AffectedContract]]:
    """Per buyer, its open contracts holding GPUs of the window's node during it."""
    held: dict[tuple[int, int], list[tuple[int, DateTimeTZRange]]] = defaultdict(list)
    for contract_id, buyer_id, gpu_id, period in Allocation.objects.filter(
        gpu_device__node_id=window.node_id,
        period__overlap=window.period,
        line__contract__state__in=OPEN_STATES,
        workload__isnull=True,  # reservations: an instance's buyer chose the moment
    ).values_list("line__contract_id", "line__contract__buyer_id", "gpu_device_id", "period"):
        held[(buyer_id, contract_id)].append((gpu_id, period))
    affected: dict[int, list[AffectedContract]] = defaultdict(list)
    for (buyer_id, contract_id), allocations in sorted(held.items()):
        since, until = _span([period for _, period in allocations])
        excluded, downtime = sla_split(window, since=since, until=until)
        affected[buyer_id].append(
            AffectedContract(
                contract_id=contract_id,
                reference=Contract(pk=contract_id).reference,
                gpu_count=len({gpu for gpu, _ in allocations}),
                excluded=hours_text(excluded),
                downtime=hours_text(downtime),
            )
        )
    return affected


def notify_buyers_of_window(*, window_id: int, event: str) -> int:
    """Mail the members of each buyer whose open contract holds GPUs under the window
    that it was scheduled or cancelled (``event``), once per window, buyer and event (a
    ``WindowNotice`` claimed first). Returns the number of buyers newly told."""
    if event not in WindowNoticeEvent.values:
        raise ValueError(f"unknown window event {event!r}")
    window = NodeWindow.objects.select_related("node__site").get(pk=window_id)
    affected = _affected_by_buyer(window)
    if not affected:
        return 0
    told = 0
    with transaction.atomic():
        for buyer_id, contracts in affected.items():
            recipients = sorted(
                Membership.objects.filter(organization_id=buyer_id).values_list(
                    "user__email", flat=True
                )
            )
            _, created = WindowNotice.objects.get_or_create(
                window=window,
                buyer_id=buyer_id,
                event=event,
                defaults={"recipient_count": len(recipients)},
            )
            if not created:
                continue
            told += 1
            if recipients:
                transaction.on_commit(
                    partial(
                        emails.send_window_notice,
                        window=window,
                        event=event,
                        recipients=recipients,
                        contracts=contracts,
                    )
                )
    return told
