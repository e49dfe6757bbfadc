"""Workloads on GPUs: instances, containers and deployments (docs/workloads.md).

Every state change of a ``Workload`` goes through these services: keyword-only, one
transaction each, the rows locked, an audit event, and the node's assignments
``generation`` raised in the same transaction, so the sweep tells the agent
(``contracts.assignments``).

- An **instance** (``instance_start``) is a container on free GPUs of an on-demand GPU
  line's offer, all on one node that is online and not in a maintenance or curtailment
  window. It holds them through ``Allocation`` rows of its own, ``[start, ∞)``, under the
  same exclusion constraint as reservations: a GPU is never both reserved and in an
  instance. It is billed per second held (``contracts.billable_usage.held_gpu_seconds``)
  until ``workload_stop`` (or a failure, or the loss of its node) closes them.
- On a **reserved** line, ``container_create`` and ``deployment_create`` run a container
  or a catalogue model on GPUs the reservation holds now (one workload per GPU at a
  time); the reservation pays for them whatever runs. Its workloads stop when the
  reservation ends (``workloads_end_with_lines``).

``workload_stop`` is idempotent: a workload already stopped, failed or lost is returned
unchanged. Ending a workload ``at`` a moment in the past (a failure the agent reported,
the last minute its node was seen healthy) truncates its allocations there, so billing
stops at that second.

A reserved workload that failed by its node's fault (``Workload.fault``) leaves its GPUs
down for the SLA until the buyer stops it, redeploys it or starts another workload on
those GPUs (``dismissed_at``, set once by ``workload_stop`` and ``_create_on_reserved``),
or until the reservation's allocation ends (``contracts.billable_usage.sla_minutes``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from accounts.audit import audit
from accounts.models import User
from capacity.models import GpuDevice, Node, NodeStatus, NodeWindow, Offer
from contracts.allocations import release_from
from contracts.models import (
    ENDED_WORKLOAD_STATES,
    Allocation,
    Contract,
    ContractLine,
    ContractState,
    InferenceProduct,
    LineKind,
    NodeAssignments,
    Workload,
    WorkloadFault,
    WorkloadKind,
    WorkloadState,
    validate_env,
    validate_image,
    validate_ports,
    validate_ssh_public_key,
)

logger = logging.getLogger(__name__)

# Attempts to take a node's GPUs after an exclusion conflict before refusing.
MAX_START_ATTEMPTS = 5
# The most GPUs one workload may ask for (the largest node the catalogue allows).
MAX_WORKLOAD_GPUS = 64


@dataclass(frozen=True)
class ImageTemplate:
    """An image offered in the start form, with the ports it usually publishes."""

    name: str
    image: str
    ports: tuple[int, ...]


IMAGE_TEMPLATES: tuple[ImageTemplate, ...] = (
    ImageTemplate("PyTorch", "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", (22,)),
    ImageTemplate("CUDA base (Ubuntu 22.04)", "nvidia/cuda:12.4.1-base-ubuntu22.04", (22,)),
    ImageTemplate("vLLM OpenAI server", "vllm/vllm-openai:v0.6.4", (22, 8000)),
    ImageTemplate(
        "Jupyter (PyTorch)", "quay.io/jupyter/pytorch-notebook:cuda12-latest", (22, 8888)
    ),
)


class NoFreeGpus(ValidationError):
    """Too few free GPUs of the offer on one node for an instance."""


# -- the node's generation ----------------------------------------------------------------


def bump_generation(*, node_ids: Iterable[int], now: datetime) -> None:
    """Raise the desired generation of ``node_ids`` by one (creating their rows), in the
    caller's transaction; a change is worth an immediate push, so any backoff resets."""
    ids = sorted(set(node_ids))
    if not ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {NodeAssignments._meta.db_table} AS na (
                node_id, generation, agent_generation, digest, next_attempt_at, attempts,
                last_error, updated_at)
            SELECT node_id, 1, 0, '', NULL, 0, '', %s FROM unnest(%s::bigint[]) AS node_id
            ON CONFLICT (node_id) DO UPDATE
            SET generation = na.generation + 1, next_attempt_at = NULL, attempts = 0,
                updated_at = EXCLUDED.updated_at
            """,  # noqa: S608 (table name from model metadata)
            [now, ids],
        )


# -- checks -------------------------------------------------------------------------------


def _check_line(line: ContractLine, *, kind: str, now: datetime) -> ContractLine:
    locked = ContractLine.objects.select_for_update().get(pk=line.pk)
    # Loaded apart: FOR UPDATE refuses the nullable side of the offer's outer join.
    locked.contract = Contract.objects.select_related("buyer").get(pk=locked.contract_id)
    if locked.offer_id is not None:
        locked.offer = Offer.objects.get(pk=locked.offer_id)
    if locked.kind != kind:
        raise ValidationError(
            f"This needs a {LineKind(kind).label.lower()} line.", code="wrong_line_kind"
        )
    if locked.ended_at is not None and locked.ended_at <= now:
        raise ValidationError("This line has ended.", code="line_ended")
    if locked.ends_at is not None and locked.ends_at <= now:
        raise ValidationError("This reservation has ended.", code="line_ended")
    if locked.contract.state != ContractState.ACTIVE:
        raise ValidationError(
            f"Your contract is {locked.contract.get_state_display().lower()}.",
            code="contract_not_active",
        )
    return locked


def _check_container(*, image: str, ssh_public_key: str, ports: object, env: object) -> None:
    validate_image(image)
    validate_ssh_public_key(ssh_public_key)
    validate_ports(ports)
    validate_env(env)


def _check_gpu_count(gpu_count: int) -> None:
    if not 1 <= gpu_count <= MAX_WORKLOAD_GPUS:
        raise ValidationError(f"Ask for 1 to {MAX_WORKLOAD_GPUS} GPUs.", code="invalid_gpu_count")


# -- instances ----------------------------------------------------------------------------

# A GPU (``device``) free from ``%(now)s`` on: no allocation holds it then (a reservation
# or an instance), no workload that has not ended runs on it, and no reservation whose
# term ended waits for roll-over to renew it (see ``_ENDED`` and ``_RENEWING``). The one
# rule, read by the count per node and by the lock that takes them.
_GPU_FREE = """
  NOT EXISTS (
    SELECT 1 FROM {allocations} AS a
    WHERE a.gpu_device_id = device.id AND a.period && tstzrange(%(now)s, NULL, '[)'))
  AND NOT EXISTS (
    SELECT 1 FROM {workload_gpus} AS wg JOIN {workloads} AS w ON w.id = wg.workload_id
    WHERE wg.gpudevice_id = device.id AND NOT w.state = ANY(%(ended)s::text[]))
  AND NOT EXISTS (
    SELECT 1 FROM {allocations} AS a
    JOIN {lines} AS cl ON cl.id = a.line_id JOIN {contracts} AS c ON c.id = cl.contract_id
    WHERE a.gpu_device_id = device.id AND a.workload_id IS NULL AND cl.ended_at IS NULL
      AND upper(a.period) = c.term_ends_at AND c.term_ends_at <= %(now)s
      AND c.auto_renew AND NOT c.cancel_at_term_end AND c.state = ANY(%(renewing)s::text[]))
"""

_FREE_NOW_BY_NODE_SQL = (
    """
SELECT device.node_id, count(*) AS free
FROM {devices} AS device JOIN {nodes} AS node ON node.id = device.node_id
WHERE node.site_id = %(site)s AND node.gpu_model_id = %(model)s AND node.status = %(online)s
  AND"""  # noqa: S608 (table names from model metadata, fragments of this module)
    + _GPU_FREE
    + """  AND NOT EXISTS (
    SELECT 1 FROM {windows} AS w
    WHERE w.node_id = node.id AND w.cancelled_at IS NULL AND w.period @> %(now)s::timestamptz)
GROUP BY device.node_id
ORDER BY count(*) DESC, device.node_id
"""
)

_LOCK_NODE_DEVICES_SQL = (
    """
SELECT device.id FROM {devices} AS device
WHERE device.node_id = %(node)s
  AND"""
    + _GPU_FREE
    + """ORDER BY device.index
LIMIT %(limit)s
FOR NO KEY UPDATE OF device SKIP LOCKED
"""
)

_INSERT_OPEN_ALLOCATIONS_SQL = """
INSERT INTO {allocations} (line_id, gpu_device_id, period, workload_id, created_at)
SELECT %s, device_id, tstzrange(%s, NULL, '[)'), %s, %s FROM unnest(%s::bigint[]) AS device_id
ON CONFLICT DO NOTHING
RETURNING gpu_device_id
"""


def _tables() -> dict[str, str]:
    return {
        "devices": GpuDevice._meta.db_table,
        "nodes": Node._meta.db_table,
        "allocations": Allocation._meta.db_table,
        "windows": NodeWindow._meta.db_table,
        "workloads": Workload._meta.db_table,
        "workload_gpus": Workload.gpus.through._meta.db_table,
        "lines": ContractLine._meta.db_table,
        "contracts": Contract._meta.db_table,
    }


# A GPU no allocation holds may still run a workload that has not stopped yet (a
# reservation's GPUs released by an amendment, before beat stops what ran on them): not
# free until it has.
_ENDED = [str(state) for state in ENDED_WORKLOAD_STATES]
# Nor is a GPU of a reservation whose term ended and that roll-over (hourly) has not
# renewed yet: an instance there would make the renewal conflict and the reservation
# expire. The states roll-over renews.
_RENEWING = [str(ContractState.ACTIVE), str(ContractState.SUSPENDED)]


def free_gpus_by_node(*, line: ContractLine, now: datetime) -> dict[int, int]:
    """GPUs of ``line``'s offer free from ``now`` on, per node that may take an instance
    (online, in no maintenance or curtailment window now), most free first."""
    assert line.offer is not None
    sql = _FREE_NOW_BY_NODE_SQL.format(**_tables())
    params: dict[str, Any] = {
        "site": line.offer.site_id,
        "model": line.offer.gpu_model_id,
        "online": NodeStatus.ONLINE.value,
        "now": now,
        "ended": _ENDED,
        "renewing": _RENEWING,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


class _Conflict(Exception):
    """GPUs taken by a transaction that committed after our snapshot: try again."""


def _take_node_gpus(
    *, workload: Workload, node_id: int, gpu_count: int, now: datetime
) -> list[int]:
    """Lock and hold ``gpu_count`` free GPUs of ``node_id`` for ``workload`` from ``now``
    on, or raise ``_Conflict`` (the caller's savepoint then undoes the partial insert)."""
    tables = _tables()
    with connection.cursor() as cursor:
        cursor.execute(
            _LOCK_NODE_DEVICES_SQL.format(**tables),
            {
                "node": node_id,
                "now": now,
                "limit": gpu_count,
                "ended": _ENDED,
                "renewing": _RENEWING,
            },
        )
        devices = [row[0] for row in cursor.fetchall()]
        if len(devices) < gpu_count:
            raise _Conflict
        cursor.execute(
            _INSERT_OPEN_ALLOCATIONS_SQL.format(**tables),
            [workload.line_id, now, workload.pk, now, devices],
        )
        held = [row[0] for row in cursor.fetchall()]
    if len(held) < gpu_count:
        raise _Conflict
    return held


def _refusal(free: int, asked: int) -> NoFreeGpus:
    return NoFreeGpus(
        f"Only {free} GPU{'s' if free != 1 else ''} of this offer "
        f"{'is' if free == 1 else 'are'} free right now; you asked for {asked}.",
        code="no_free_gpus",
    )


def _submitted_before(
    *,
    line: ContractLine,
    key: str,
    gpu_count: int,
    image: str,
    ssh_public_key: str,
    ports: list[int],
    env: dict[str, str],
) -> Workload | None:
    """The instance an earlier start with ``key`` created for ``line``'s buyer, which must
    have asked the same; None when the key is new. Called with ``line`` locked, so a
    start with the same key still in flight has committed (or rolled back) by now."""
    buyer_id = Contract.objects.filter(pk=line.contract_id).values_list("buyer_id", flat=True)
    earlier = (
        Workload.objects.filter(line__contract__buyer_id__in=buyer_id, submission_key=key)
        .select_related("line")
        .first()
    )
    if earlier is None:
        return None
    asked = (line.pk, gpu_count, image, ssh_public_key, ports, env)
    if (
        earlier.line_id,
        earlier.gpus.count(),
        earlier.image,
        earlier.ssh_public_key,
        list(earlier.ports),
        dict(earlier.env),
    ) != asked:
        raise ValidationError(
            "This start was already used for another instance; send a new key "
            "(or reload the form) to start another.",
            code="submission_reused",
        )
    earlier.replayed = True
    return earlier


@transaction.atomic
def instance_start(
    *,
    line: ContractLine,
    gpu_count: int,
    image: str,
    ssh_public_key: str,
    ports: Sequence[int],
    env: dict[str, str],
    actor: User | None,
    submission_key: str | None = None,
    now: datetime | None = None,
) -> Workload:
    """Start an instance of ``line`` (an active on-demand GPU line): a container on
    ``gpu_count`` free GPUs of its offer on one node, held from ``now`` until stopped.

    Refused (``ValidationError``, nothing written) when the line or contract is not
    active, the inputs are invalid, or no single node has ``gpu_count`` free GPUs
    (``NoFreeGpus``: "Only N GPUs of this offer are free right now; you asked for M.",
    N being the most free on one node). A GPU taken by a concurrent start is detected by
    the exclusion constraint; the next node (or the same one's other GPUs) is tried, a
    bounded number of times.

    ``submission_key`` (the start form's one-time key, the API's ``Idempotency-Key``),
    as checkout's: a start repeated with it returns the instance the first one created
    (``replayed`` set, nothing written, whatever happened to it since), and one that asks
    for something else under the same key of the same buyer is refused
    (``submission_reused``). Starts on one line wait for each other on the line's row
    lock, so two concurrent posts with one key start one instance; the unique
    (line, key) constraint holds it in the database.
    """
    now = now or timezone.now()
    ports, env = list(ports), dict(env)
    if submission_key:
        line = ContractLine.objects.select_for_update().get(pk=line.pk)
        earlier = _submitted_before(
            line=line,
            key=submission_key,
            gpu_count=gpu_count,
            image=image,
            ssh_public_key=ssh_public_key,
            ports=ports,
            env=env,
        )
        if earlier is not None:
            return earlier
    line = _check_line(line, kind=LineKind.ON_DEMAND_GPU, now=now)
    _check_gpu_count(gpu_count)
    _check_container(image=image, ssh_public_key=ssh_public_key, ports=ports, env=env)
    for _ in range(MAX_START_ATTEMPTS):
        free = free_gpus_by_node(line=line, now=now)
        candidates = [node_id for node_id, count in free.items() if count >= gpu_count]
        if not candidates:
            raise _refusal(max(free.values(), default=0), gpu_count)
        for node_id in candidates:
            try:
                with transaction.atomic():
                    workload = Workload.objects.create(
                        line=line,
                        node_id=node_id,
                        kind=WorkloadKind.CONTAINER,
                        image=image,
                        ports=ports,
                        env=env,
                        ssh_public_key=ssh_public_key,
                        state=WorkloadState.REQUESTED,
                        state_since=now,
                        started_at=now,
                        created_at=now,
                        submission_key=submission_key or "",
                    )
                    held = _take_node_gpus(
                        workload=workload, node_id=node_id, gpu_count=gpu_count, now=now
                    )
            except _Conflict:
                logger.info("instance start on line %s: GPUs of node %s taken", line.pk, node_id)
                continue
            workload.gpus.set(held)
            bump_generation(node_ids=[node_id], now=now)
            audit(
                action="workload.instance_started",
                actor=actor,
                organization=line.contract.buyer,
                target=workload,
                workload=workload.public_id,
                line_id=line.pk,
                node_id=node_id,
                gpu_count=gpu_count,
                image=image,
                submission_key=submission_key or "",
            )
            return workload
    raise _refusal(0, gpu_count)


# -- reserved GPUs ------------------------------------------------------------------------


def _reserved_gpus(
    *, line: ContractLine, gpu_ids: Sequence[int] | None, gpu_count: int | None, now: datetime
) -> tuple[int, list[GpuDevice]]:
    """(node id, GPUs) the reservation holds now, no active workload of the line uses,
    all on one node: the ``gpu_ids`` asked for, or the first ``gpu_count`` free ones of
    the node with the most free."""
    held = {
        allocation.gpu_device_id: allocation.gpu_device
        for allocation in Allocation.objects.select_for_update(of=("self",))
        .filter(line=line, workload__isnull=True, period__contains=now)
        .select_related("gpu_device")
    }
    busy = set(
        Workload.gpus.through.objects.filter(workload__line=line, gpudevice_id__in=list(held))
        .exclude(workload__state__in=ENDED_WORKLOAD_STATES)
        .values_list("gpudevice_id", flat=True)
    )
    free = {pk: gpu for pk, gpu in held.items() if pk not in busy}
    if gpu_ids is not None:
        if not gpu_ids or len(set(gpu_ids)) != len(gpu_ids):
            raise ValidationError("Choose one or more distinct GPUs.", code="invalid_gpus")
        missing = [pk for pk in gpu_ids if pk not in held]
        if missing:
            raise ValidationError(
                "Choose GPUs this reservation holds now.", code="gpu_not_reserved"
            )
        taken = [pk for pk in gpu_ids if pk in busy]
        if taken:
            raise ValidationError(
                "A workload already runs on one of these GPUs; stop it first.", code="gpu_busy"
            )
        chosen = [free[pk] for pk in gpu_ids]
        if len({gpu.node_id for gpu in chosen}) != 1:
            raise ValidationError("Choose GPUs of one node.", code="gpus_on_several_nodes")
        return chosen[0].node_id, chosen
    _check_gpu_count(gpu_count or 0)
    by_node: dict[int, list[GpuDevice]] = {}
    for gpu in sorted(free.values(), key=lambda gpu: (gpu.node_id, gpu.index)):
        by_node.setdefault(gpu.node_id, []).append(gpu)
    fitting = [node_id for node_id, gpus in by_node.items() if len(gpus) >= (gpu_count or 0)]
    if not fitting:
        most = max((len(gpus) for gpus in by_node.values()), default=0)
        raise ValidationError(
            f"Only {most} of this reservation's GPUs on one node are free of workloads; "
            f"you asked for {gpu_count}.",
            code="no_free_gpus",
        )
    node_id = max(fitting, key=lambda node: (len(by_node[node]), -node))
    return node_id, by_node[node_id][: gpu_count or 0]


def _create_on_reserved(
    *,
    line: ContractLine,
    node_id: int,
    gpus: list[GpuDevice],
    actor: User | None,
    now: datetime,
    **fields: object,
) -> Workload:
    _dismiss_node_failures(line=line, gpu_ids=[gpu.pk for gpu in gpus], now=now)
    workload = Workload.objects.create(
        line=line,
        node_id=node_id,
        state=WorkloadState.REQUESTED,
        state_since=now,
        started_at=now,
        created_at=now,
        **fields,
    )
    workload.gpus.set(gpus)
    bump_generation(node_ids=[node_id], now=now)
    audit(
        action=f"workload.{workload.kind}_created",
        actor=actor,
        organization=line.contract.buyer,
        target=workload,
        workload=workload.public_id,
        line_id=line.pk,
        node_id=node_id,
        gpu_ids=[gpu.pk for gpu in gpus],
    )
    return workload


def _node_failures_to_dismiss(line: ContractLine) -> QuerySet[Workload]:
    """``line``'s workloads that failed by the node's fault and still count as down."""
    return Workload.objects.filter(
        line=line, state=WorkloadState.FAILED, fault=WorkloadFault.NODE, dismissed_at=None
    )


def _dismiss_node_failures(*, line: ContractLine, gpu_ids: list[int], now: datetime) -> None:
    """A new workload on ``gpu_ids`` ends the SLA downtime of failures on them there."""
    _node_failures_to_dismiss(line).filter(gpus__in=gpu_ids, ended_at__lte=now).update(
        dismissed_at=now
    )


def gpus_memory_shortfall(*, gpus: Sequence[GpuDevice], product: InferenceProduct) -> str | None:
    """Why ``gpus`` cannot hold one replica of ``product`` (plain words), or None: their
    memory together is below the product's ``memory_required_mib`` (the rule
    ``contracts.serving`` applies to a node's opt-in, for the chosen GPUs)."""
    available = sum(gpu.memory_mib for gpu in gpus)
    if available >= product.memory_required_mib:
        return None
    return (
        f"{product.name} needs {product.memory_required_mib:,} MiB of GPU memory; "
        f"the {len(gpus)} GPU{'s' if len(gpus) != 1 else ''} chosen have {available:,} MiB."
    )


@transaction.atomic
def deployment_create(
    *,
    line: ContractLine,
    product: InferenceProduct,
    actor: User | None,
    gpu_ids: Sequence[int] | None = None,
    gpu_count: int | None = None,
    now: datetime | None = None,
) -> Workload:
    """Serve ``product`` on GPUs ``line`` (an active reserved line) holds now: the GPUs
    ``gpu_ids`` or ``gpu_count`` free ones, on one node, none running another workload.
    The buyer's keys reach it at the gateway as ``workload.served_model_name``. Refused
    when the product is not sold or the GPUs' memory cannot hold it."""
    now = now or timezone.now()
    line = _check_line(line, kind=LineKind.RESERVED, now=now)
    if not product.is_active:
        raise ValidationError(f"{product.name} is no longer sold.", code="product_inactive")
    node_id, gpus = _reserved_gpus(line=line, gpu_ids=gpu_ids, gpu_count=gpu_count, now=now)
    shortfall = gpus_memory_shortfall(gpus=gpus, product=product)
    if shortfall is not None:
        raise ValidationError(shortfall, code="insufficient_memory")
    return _create_on_reserved(
        line=line,
        node_id=node_id,
        gpus=gpus,
        actor=actor,
        now=now,
        kind=WorkloadKind.DEPLOYMENT,
        inference_product=product,
    )


@transaction.atomic
def container_create(
    *,
    line: ContractLine,
    image: str,
    ssh_public_key: str,
    ports: Sequence[int],
    env: dict[str, str],
    actor: User | None,
    gpu_ids: Sequence[int] | None = None,
    gpu_count: int | None = None,
    now: datetime | None = None,
) -> Workload:
    """Run a container on GPUs ``line`` (an active reserved line) holds now (as
    ``deployment_create`` chooses them); billed by the reservation."""
    now = now or timezone.now()
    line = _check_line(line, kind=LineKind.RESERVED, now=now)
    ports, env = list(ports), dict(env)
    _check_container(image=image, ssh_public_key=ssh_public_key, ports=ports, env=env)
    node_id, gpus = _reserved_gpus(line=line, gpu_ids=gpu_ids, gpu_count=gpu_count, now=now)
    return _create_on_reserved(
        line=line,
        node_id=node_id,
        gpus=gpus,
        actor=actor,
        now=now,
        kind=WorkloadKind.CONTAINER,
        image=image,
        ports=ports,
        env=env,
        ssh_public_key=ssh_public_key,
    )


# -- ending -------------------------------------------------------------------------------


def _end(
    *,
    workload: Workload,
    state: WorkloadState,
    at: datetime,
    now: datetime,
    reason: str = "",
    fault: WorkloadFault | None = None,
    actor: User | None = None,
    action: str,
) -> tuple[Workload, bool]:
    """End ``workload`` (locked here) in ``state`` at ``at``: its instance allocations
    truncated there, its node told. Returns (workload, whether it changed): a workload
    already ended is left as it is."""
    locked = (
        Workload.objects.select_for_update().select_related("line__contract").get(pk=workload.pk)
    )
    if locked.state in ENDED_WORKLOAD_STATES:
        return locked, False
    ended_at = max(at, locked.started_at)
    release_from(
        allocations=list(Allocation.objects.select_for_update().filter(workload=locked)),
        moment=ended_at,
    )
    locked.state = state
    locked.state_since = ended_at
    locked.ended_at = ended_at
    locked.reason = reason[:500]
    locked.fault = fault or ""
    locked.save(update_fields=["state", "state_since", "ended_at", "reason", "fault"])
    bump_generation(node_ids=[locked.node_id], now=now)
    audit(
        action=action,
        actor=actor,
        organization=locked.line.contract.buyer,
        target=locked,
        workload=locked.public_id,
        ended_at=ended_at.isoformat(),
        reason=locked.reason,
        fault=locked.fault,
    )
    return locked, True


@transaction.atomic
def workload_stop(
    *, workload: Workload, actor: User | None, now: datetime | None = None
) -> Workload:
    """Stop ``workload`` now: an instance's GPUs are released (billing ends at ``now``),
    the agent is told. Idempotent: a workload already stopped, failed or lost is
    returned unchanged, no error; only a reserved one that failed by the node's fault
    and still counted as down stops counting at ``now`` (once)."""
    now = now or timezone.now()
    stopped, changed = _end(
        workload=workload,
        state=WorkloadState.STOPPED,
        at=now,
        now=now,
        actor=actor,
        action="workload.stopped",
    )
    if not changed and (
        _node_failures_to_dismiss(stopped.line)
        .filter(pk=stopped.pk, ended_at__lte=now)
        .update(dismissed_at=now)
    ):
        stopped.dismissed_at = now
        audit(
            action="workload.dismissed",
            actor=actor,
            organization=stopped.line.contract.buyer,
            target=stopped,
            workload=stopped.public_id,
            dismissed_at=now.isoformat(),
        )
    return stopped


@transaction.atomic
def workload_fail(
    *,
    workload: Workload,
    at: datetime,
    reason: str,
    fault: WorkloadFault,
    now: datetime | None = None,
) -> tuple[Workload, bool]:
    """The agent reported ``workload`` failed at ``at`` by ``fault``: it ends there (an
    instance is not billed past the failure; a reserved one failed by the node's fault
    counts as down for the SLA from there until dismissed). Idempotent."""
    return _end(
        workload=workload,
        state=WorkloadState.FAILED,
        at=at,
        now=now or timezone.now(),
        reason=reason or "failed",
        fault=fault,
        action="workload.failed",
    )


@transaction.atomic
def workload_lose(
    *, workload: Workload, at: datetime, reason: str, now: datetime | None = None
) -> tuple[Workload, bool]:
    """``workload``'s node stopped answering while it ran: it is lost, ending at ``at``
    (the last minute the node was seen healthy). Idempotent."""
    return _end(
        workload=workload,
        state=WorkloadState.LOST,
        at=at,
        now=now or timezone.now(),
        reason=reason,
        fault=WorkloadFault.NODE,
        action="workload.lost",
    )


@transaction.atomic
def workload_redeploy(
    *,
    workload: Workload,
    actor: User | None,
    image: str | None = None,
    product: InferenceProduct | None = None,
    now: datetime | None = None,
) -> Workload:
    """Replace a workload on a reserved line with a fresh one on the same GPUs: the same
    spec, or another ``image`` (container) or ``product`` (deployment). The old one is
    stopped in the same transaction, so the agent sees one change."""
    now = now or timezone.now()
    old = Workload.objects.select_related("line").get(pk=workload.pk)
    if old.line.kind != LineKind.RESERVED:
        raise ValidationError(
            "Only workloads on reserved GPUs are redeployed; start a new instance instead.",
            code="not_reserved",
        )
    gpu_ids = list(old.gpus.values_list("pk", flat=True))
    workload_stop(workload=old, actor=actor, now=now)
    if old.kind == WorkloadKind.DEPLOYMENT:
        chosen = product or old.inference_product
        assert chosen is not None  # a deployment has one (check constraint)
        return deployment_create(
            line=old.line, product=chosen, actor=actor, gpu_ids=gpu_ids, now=now
        )
    return container_create(
        line=old.line,
        image=image or old.image,
        ssh_public_key=old.ssh_public_key,
        ports=old.ports,
        env=old.env,
        actor=actor,
        gpu_ids=gpu_ids,
        now=now,
    )


@transaction.atomic
def workloads_end_with_lines(*, now: datetime | None = None) -> int:
    """Stop every running workload whose line has ended by ``now`` (cancelled, expired,
    removed by an amendment, a reservation past its end), or whose reserved GPUs the
    reservation no longer holds, at the moment its GPUs stopped being the line's. Beat
    runs it after the contracts' roll-over; contract lifecycle calls it as lines end.
    Returns how many it stopped."""
    now = now or timezone.now()
    ended = Workload.objects.active().filter(Q(line__ended_at__lte=now) | Q(line__ends_at__lte=now))
    # A reserved workload whose GPUs the reservation no longer all holds (amended away).
    gpu_not_held = Workload.gpus.through.objects.filter(workload=OuterRef("pk")).exclude(
        Exists(
            Allocation.objects.filter(
                gpu_device=OuterRef("gpudevice_id"),
                line=OuterRef("workload__line"),
                period__contains=now,
            )
        )
    )
    unheld = (
        Workload.objects.active()
        .filter(line__kind=LineKind.RESERVED)
        .exclude(pk__in=ended.values("pk"))
        .filter(Exists(gpu_not_held))
    )
    return _end_with_lines(
        workloads=list(ended.select_related("line")) + list(unheld.select_related("line")),
        now=now,
    )


def _end_with_lines(*, workloads: list[Workload], now: datetime) -> int:
    stopped = 0
    for workload in workloads:
        line = workload.line
        at = min(moment for moment in (line.ended_at, line.ends_at, now) if moment is not None)
        _, changed = _end(
            workload=workload,
            state=WorkloadState.STOPPED,
            at=at,
            now=now,
            reason="The contract line ended.",
            action="workload.stopped_with_line",
        )
        stopped += changed
    return stopped


# How long an instance may wait for its node to take it before it fails, unbilled.
UNACCEPTED_AFTER = timedelta(minutes=10)


def instances_never_taken_fail(*, now: datetime | None = None) -> int:
    """Fail the instances still waiting for their node ``UNACCEPTED_AFTER`` after the
    buyer started them (a node that does not answer, an agent that refuses or predates
    assignments), ended at their start: billed per second held from the click, they
    would otherwise cost the buyer for GPUs that never ran anything. Returns how many."""
    now = now or timezone.now()
    waiting = Workload.objects.filter(
        state=WorkloadState.REQUESTED,
        line__kind=LineKind.ON_DEMAND_GPU,
        started_at__lte=now - UNACCEPTED_AFTER,
    )
    failed = 0
    for workload in waiting.select_related("line"):
        _, changed = workload_fail(
            workload=workload,
            at=workload.started_at,
            reason="The node did not take the instance within 10 minutes; it cost nothing.",
            fault=WorkloadFault.NODE,
            now=now,
        )
        failed += changed
    return failed


def line_workloads_end(
    *, line_ids: Iterable[int], at: datetime, reason: str = "The contract line ended."
) -> int:
    """Stop the running workloads of ``line_ids`` at ``at`` (their lines end there, or
    their contract was suspended: ``reason``), in the caller's transaction. Returns how
    many it stopped."""
    workloads = list(
        Workload.objects.active().filter(line_id__in=list(line_ids)).select_related("line")
    )
    stopped = 0
    for workload in workloads:
        _, changed = _end(
            workload=workload,
            state=WorkloadState.STOPPED,
            at=at,
            now=max(at, timezone.now()),
            reason=reason,
            action="workload.stopped_with_line",
        )
        stopped += changed
    return stopped
