"""Reads of workloads for the buyer's pages and API and the partner's node page.

Writes are ``contracts.workloads``'; this module only reads. Lists return querysets with
the joins their pages render (a fixed number of queries per page), annotated with
``gpu_count`` and ``waiting_for_node`` (the node has not accepted the latest change:
``NodeAssignments.generation > agent_generation``, docs/workloads.md "Cheap polling").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet

from accounts.models import Organization
from capacity.selectors import NodeWorkload
from contracts.billable_usage import held_gpu_seconds
from contracts.charges import held_charge
from contracts.models import (
    ENDED_WORKLOAD_STATES,
    Contract,
    ContractLine,
    ContractState,
    LineKind,
    NodeAssignments,
    Workload,
    WorkloadState,
)

# How far back the partner's node page lists workloads that failed or were lost.
NODE_FAILURES_SHOWN_FOR = timedelta(days=7)
# At most this many rows of workloads on the partner's node page.
NODE_WORKLOADS_SHOWN = 100
_SECOND = timedelta(seconds=1)


def _annotated(workloads: QuerySet[Workload]) -> QuerySet[Workload]:
    behind = NodeAssignments.objects.filter(
        node_id=OuterRef("node_id"), generation__gt=F("agent_generation")
    )
    return workloads.select_related(
        "line__contract", "line__offer__site", "line__offer__gpu_model", "inference_product"
    ).annotate(gpu_count=Count("gpus"), waiting_for_node=Exists(behind))


def buyer_instances(*, organization: Organization) -> QuerySet[Workload]:
    """The buyer's instances (containers of on-demand GPU lines), newest first."""
    return _annotated(
        Workload.objects.for_organization(organization).filter(line__kind=LineKind.ON_DEMAND_GPU)
    ).order_by("-started_at", "-pk")


def buyer_workloads(
    *, organization: Organization, contract_id: int | None = None, kind: str | None = None
) -> QuerySet[Workload]:
    """The buyer's workloads (instances and those on reserved GPUs), newest first."""
    workloads = Workload.objects.for_organization(organization)
    if contract_id is not None:
        workloads = workloads.filter(line__contract_id=contract_id)
    if kind is not None:
        workloads = workloads.filter(kind=kind)
    return _annotated(workloads).order_by("-started_at", "-pk")


def contract_workloads(*, contract: Contract) -> QuerySet[Workload]:
    """The contract's workloads, those still running first, then newest first."""
    return _annotated(Workload.objects.filter(line__contract=contract)).order_by(
        F("ended_at").desc(nulls_first=True), "-started_at", "-pk"
    )


def workload_detail(*, organization: Organization) -> QuerySet[Workload]:
    """The buyer's workloads with what one workload's page shows (GPUs prefetched)."""
    return _annotated(Workload.objects.for_organization(organization)).prefetch_related("gpus")


def instance_lines(*, organization: Organization) -> QuerySet[ContractLine]:
    """The buyer's current on-demand GPU lines on active contracts: where an instance
    may start."""
    return (
        ContractLine.objects.for_organization(organization)
        .filter(
            kind=LineKind.ON_DEMAND_GPU,
            ended_at__isnull=True,
            contract__state=ContractState.ACTIVE,
        )
        .select_related("contract", "offer__site", "offer__gpu_model")
        .order_by("contract_id", "pk")
    )


@dataclass(frozen=True)
class HeldSoFar:
    """What an instance has held so far: wall-clock seconds, GPU-seconds and their cost
    (the line's rate, rounded once as an invoice line is)."""

    seconds: int
    gpu_seconds: Decimal
    cost_minor: int
    currency: str

    @property
    def whole_gpu_seconds(self) -> int:
        """GPU-seconds held, whole seconds (as ``seconds``, rounded down) for display."""
        return int(self.gpu_seconds)


def instances_held(
    *, workloads: list[Workload], now: datetime, since: datetime | None = None
) -> dict[int, HeldSoFar]:
    """{workload pk: what it held} for the instances among ``workloads`` (loaded with
    their line and contract), from their start (or ``since``) to their stop or ``now``:
    the GPU-seconds ``contracts.billable_usage.held_gpu_seconds`` bills for their line,
    read from it per instance, priced by ``contracts.charges.held_charge`` and rounded
    once, as an invoice line is. Workloads on reserved GPUs are absent (the reservation
    pays for them). One query."""
    instances = {w.pk: w for w in workloads if w.line.kind == LineKind.ON_DEMAND_GPU}
    if not instances:
        return {}
    first = min(workload.started_at for workload in instances.values())
    counted_from = max(first, since) if since else first
    by_instance = (
        held_gpu_seconds(
            start=counted_from,
            end=now,
            workload_ids=list(instances),
            by_workload=True,
            now=now,
        )
        if counted_from < now
        else {}
    )
    gpu_seconds_of = {key.workload_id: seconds for key, seconds in by_instance.items()}
    held = {}
    for pk, workload in instances.items():
        start = max(workload.started_at, since) if since else workload.started_at
        end = min(workload.ended_at or now, now)
        gpu_seconds = gpu_seconds_of.get(pk, Decimal(0))
        held[pk] = HeldSoFar(
            seconds=max(0, (end - start) // _SECOND),
            gpu_seconds=gpu_seconds,
            cost_minor=held_charge(line=workload.line, gpu_seconds=gpu_seconds).amount_minor,
            currency=workload.line.contract.currency,
        )
    return held


def instance_held(*, workload: Workload, now: datetime) -> HeldSoFar | None:
    """What ``workload`` held from its start to its stop or ``now`` (``instances_held``);
    None on reserved GPUs."""
    return instances_held(workloads=[workload], now=now).get(workload.pk)


def instances_in(
    *, organization: Organization, since: datetime, now: datetime
) -> QuerySet[Workload]:
    """The buyer's instances that held GPUs in ``[since, now)``, newest first (the usage
    page's month so far; ``instances_held`` with ``since`` gives what each held in it)."""
    return buyer_instances(organization=organization).filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=since), started_at__lt=now
    )


def node_workloads(*, node_id: int, now: datetime) -> list[NodeWorkload]:
    """What runs on the node's GPUs, as its partner may see it: per GPU the workload's
    kind, state, since when and a failure's reason, never the buyer, the image, the
    environment or the SSH key. Running ones, then those that failed or were lost in
    the last ``NODE_FAILURES_SHOWN_FOR``. Registered with capacity (``capacity.selectors``)."""
    through = Workload.gpus.through.objects.filter(workload__node_id=node_id)
    recent_failure = {"workload__state__in": [WorkloadState.FAILED, WorkloadState.LOST]}
    active = through.exclude(workload__state__in=ENDED_WORKLOAD_STATES)
    failed = through.filter(**recent_failure, workload__ended_at__gte=now - NODE_FAILURES_SHOWN_FOR)
    rows = (active | failed).values_list(
        "gpudevice__index",
        "gpudevice__uuid",
        "workload__kind",
        "workload__state",
        "workload__state_since",
        "workload__reason",
        "workload__line__kind",
    )
    rows = rows.order_by("-workload__state_since", "gpudevice__index")[:NODE_WORKLOADS_SHOWN]
    kinds = {"container": "Container", "deployment": "Model deployment"}
    return [
        NodeWorkload(
            gpu_index=index,
            gpu_uuid=uuid,
            kind=(
                "Instance"
                if kind == "container" and line_kind == LineKind.ON_DEMAND_GPU
                else kinds.get(kind, kind)
            ),
            state=WorkloadState(state).label,
            is_failure=state in (WorkloadState.FAILED, WorkloadState.LOST),
            since=since,
            reason=reason if state in (WorkloadState.FAILED, WorkloadState.LOST) else "",
        )
        for index, uuid, kind, state, since, reason, line_kind in rows
    ]
