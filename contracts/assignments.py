"""Contracts' side of assignments on metering's polls (``capacity.metering.assignments``).

Registered in ``ContractsConfig.ready``; metering calls it without importing contracts.

- ``load_plans``: per node, what covers its GPUs (every workload that has not ended,
  and those that ended within ``LATE_RECORDS`` so late records of their last windows are
  still believed), the signed body to push when the node's generation is ahead of its
  agent's and no backoff holds it back, and the digest of the workloads last read.
- ``apply_reports``: the generation the agent holds; a failed push backs off (30 s
  doubling up to 15 min); workloads' states from ``GET /v1/workloads`` (a failure ends
  the workload at the moment the agent says it failed, with whose fault it was,
  ``reported_fault``); a node that went unreachable
  loses its running instances at the last minute it was seen healthy.

The wire (body shape, signature) is docs/workloads.md, built by the agent package's own
``capacity.agent.assignments`` so both sides encode it the same way.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils.dateparse import parse_datetime

from capacity.metering.assignments import (
    AssignmentPush,
    AssignmentReport,
    NodeAssignmentPlan,
)
from capacity.metering.models import NodePollState
from capacity.metering.validation import AssignmentCover, to_unix_us
from capacity.models import Node, NodeStatus
from config.gateway_keys import receipt_signing_key
from contracts.models import (
    ENDED_WORKLOAD_STATES,
    LineKind,
    NodeAssignments,
    Workload,
    WorkloadFault,
    WorkloadKind,
    WorkloadState,
)
from contracts.workloads import workload_fail, workload_lose

logger = logging.getLogger(__name__)

# Records of a workload's last windows may arrive this long after it ended (a node that
# was offline) and still be believed.
LATE_RECORDS = timedelta(days=7)
# A node unreachable this long loses its running instances.
LOST_AFTER = timedelta(minutes=5)
# Backoff of a failed push: 30 s, doubling, at most 15 min.
FIRST_BACKOFF_S = 30
MAX_BACKOFF_S = 15 * 60
# States the agent reports for a workload still meant to run.
_RUNNING_STATES = {
    WorkloadState.PENDING,
    WorkloadState.PULLING,
    WorkloadState.STARTING,
    WorkloadState.RUNNING,
    WorkloadState.STOPPING,
}
_MAX_CONNECTION_CHARS = 2000


def backoff_seconds(attempts: int) -> int:
    """Delay after the ``attempts``-th failed push in a row (1 → 30 s, 2 → 60 s, …)."""
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** max(0, attempts - 1))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def assignment_of(workload: Workload, gpu_uuids: list[str]) -> dict[str, object]:
    """One workload as the agent is told it (docs/workloads.md)."""
    if workload.kind == WorkloadKind.DEPLOYMENT:
        assert workload.inference_product is not None
        return {
            "id": workload.public_id,
            "kind": "deployment",
            "gpus": gpu_uuids,
            "model": workload.inference_product.slug,
            "served_model_name": workload.served_model_name,
        }
    return {
        "id": workload.public_id,
        "kind": "container",
        "gpus": gpu_uuids,
        "image": workload.image,
        "ports": list(workload.ports),
        "env": dict(workload.env),
        "ssh_public_key": workload.ssh_public_key,
    }


def _gpu_uuids(workload: Workload) -> list[str]:
    return [gpu.uuid for gpu in sorted(workload.gpus.all(), key=lambda gpu: gpu.index)]


def assignment_covers(
    *, node_ids: Sequence[int], now: datetime
) -> tuple[dict[int, dict[str, AssignmentCover]], dict[int, list[dict[str, object]]]]:
    """Per node, what each assignment covers (workloads not ended, or ended within
    ``LATE_RECORDS``) and the desired assignments (those not ended) as the agent is told
    them. Two queries."""
    workloads = list(
        Workload.objects.filter(node_id__in=list(node_ids))
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=now - LATE_RECORDS))
        .select_related("inference_product")
        .prefetch_related("gpus")
        .order_by("pk")
    )
    covers: dict[int, dict[str, AssignmentCover]] = defaultdict(dict)
    desired: dict[int, list[dict[str, object]]] = defaultdict(list)
    for workload in workloads:
        uuids = _gpu_uuids(workload)
        covers[workload.node_id][workload.public_id] = AssignmentCover(
            gpu_uuids=frozenset(uuids),
            start_us=to_unix_us(workload.started_at),
            end_us=to_unix_us(workload.ended_at) if workload.ended_at else None,
        )
        if workload.state not in ENDED_WORKLOAD_STATES:
            desired[workload.node_id].append(assignment_of(workload, uuids))
    return covers, desired


def load_plans(*, node_ids: Sequence[int], now: datetime) -> dict[int, NodeAssignmentPlan]:
    """Each node's ``NodeAssignmentPlan`` (see the module docstring). Three queries, plus
    one signature per node with a push due."""
    covers, desired = assignment_covers(node_ids=node_ids, now=now)
    plans: dict[int, NodeAssignmentPlan] = {}
    rows = NodeAssignments.objects.filter(node_id__in=list(node_ids)).values_list(
        "node_id",
        "generation",
        "agent_generation",
        "digest",
        "next_attempt_at",
        "node__agent_public_key",
    )
    for node_id, generation, agent_generation, digest, next_attempt_at, agent_key in rows:
        push = None
        if generation > agent_generation and (next_attempt_at is None or next_attempt_at <= now):
            push = _signed_push(
                node_id=node_id,
                agent_key=agent_key,
                generation=generation,
                assignments=desired[node_id],
                now=now,
            )
        plans[node_id] = NodeAssignmentPlan(
            covers=covers[node_id], push=push, digest=digest, agent_generation=agent_generation
        )
    for node_id, node_covers in covers.items():
        plans.setdefault(node_id, NodeAssignmentPlan(covers=node_covers))
    return plans


def _signed_push(
    *,
    node_id: int,
    agent_key: str,
    generation: int,
    assignments: list[dict[str, object]],
    now: datetime,
) -> AssignmentPush:
    from capacity.agent.assignments import assignments_body, sign_assignments

    body = assignments_body(node_id, agent_key, generation, _rfc3339(now), assignments)
    body, signature = sign_assignments(receipt_signing_key(), body)
    return AssignmentPush(generation=generation, body=body, signature=signature)


def apply_reports(*, reports: Sequence[AssignmentReport], now: datetime) -> None:
    """Store what the polls of a batch learnt (see the module docstring)."""
    for report in reports:
        try:
            with transaction.atomic():
                _apply(report, now=now)
        except (DatabaseError, ValidationError, ValueError):  # one node's, not the batch's
            logger.exception("assignments report of node %s not applied", report.node_id)


def _apply(report: AssignmentReport, *, now: datetime) -> None:
    node_id = report.node_id
    if report.poll_failed:
        _lose_instances_if_unreachable(node_id=node_id, now=now)
        return
    row = NodeAssignments.objects.select_for_update().filter(node_id=node_id).first()
    if row is None and report.workloads is None:
        return
    if row is None:
        row = NodeAssignments.objects.create(node_id=node_id, updated_at=now)
    if report.agent_generation is not None:
        row.agent_generation = max(row.agent_generation, report.agent_generation)
    if report.pushed_generation is not None:
        if report.push_error:
            row.attempts += 1
            row.next_attempt_at = now + timedelta(seconds=backoff_seconds(row.attempts))
            row.last_error = report.push_error[:2000]
        else:
            row.agent_generation = max(row.agent_generation, report.pushed_generation)
            row.attempts, row.next_attempt_at, row.last_error = 0, None, ""
    if report.workloads is not None and report.agent_digest is not None:
        _apply_workloads(node_id=node_id, reported=report.workloads, now=now)
        row.digest = report.agent_digest
    row.updated_at = now
    # Never ``generation``: a change made meanwhile (a failure just applied) raised it.
    row.save(
        update_fields=[
            "agent_generation",
            "attempts",
            "next_attempt_at",
            "last_error",
            "digest",
            "updated_at",
        ]
    )


def _apply_workloads(*, node_id: int, reported: list[object], now: datetime) -> None:
    """Move the node's active workloads to the states the agent reports."""
    active = {
        workload.public_id: workload
        for workload in Workload.objects.active().filter(node_id=node_id)
    }
    for item in reported:
        if not isinstance(item, dict):
            continue
        workload = active.get(str(item.get("id", "")))
        if workload is None:
            continue
        state = str(item.get("state", ""))
        since = parse_datetime(str(item.get("since", ""))) or now
        since = min(since if since.tzinfo else since.replace(tzinfo=UTC), now)
        reason = str(item.get("reason", ""))[:500]
        if state in (WorkloadState.FAILED, WorkloadState.STOPPED):
            # A workload the platform still wants that stopped by itself has failed.
            workload_fail(
                workload=workload,
                at=since,
                reason=reason or "The workload stopped on the node.",
                fault=reported_fault(workload, item.get("fault")),
                now=now,
            )
            continue
        if state not in _RUNNING_STATES:
            continue
        connection = item.get("connection")
        if not isinstance(connection, dict) or len(str(connection)) > _MAX_CONNECTION_CHARS:
            connection = {}
        if workload.state == state and workload.connection == connection:
            continue
        Workload.objects.filter(pk=workload.pk).exclude(state__in=ENDED_WORKLOAD_STATES).update(
            state=state,
            state_since=since if workload.state != state else F("state_since"),
            connection=connection,
            reason="",
        )


def reported_fault(workload: Workload, fault: object) -> WorkloadFault:
    """Whose fault a failure the agent reports is (docs/workloads.md "Whose fault"): the
    buyer's only when the agent says so of a container (the buyer's image); a
    deployment runs the catalogue's engine, so its failures are always the node's, and
    so is a failure the agent does not classify."""
    if workload.kind == WorkloadKind.CONTAINER and fault == WorkloadFault.BUYER:
        return WorkloadFault.BUYER
    return WorkloadFault.NODE


def _lose_instances_if_unreachable(*, node_id: int, now: datetime) -> None:
    """A node metering has found unreachable for ``LOST_AFTER`` loses its running
    instances, at the last minute it was polled successfully (their GPUs are billed up
    to there). Reserved workloads stay: the reservation holds the GPUs, the agent
    converges again when the node is back, and the SLA counts the minutes down."""
    node = Node.objects.filter(pk=node_id).values("status", "last_successful_poll_at").first()
    if node is None or node["status"] != NodeStatus.UNREACHABLE:
        return
    unreachable_since = (
        NodePollState.objects.filter(node_id=node_id)
        .values_list("unreachable_since", flat=True)
        .first()
    )
    if unreachable_since is None or unreachable_since > now - LOST_AFTER:
        return
    instances = Workload.objects.active().filter(node_id=node_id, line__kind=LineKind.ON_DEMAND_GPU)
    for workload in instances:
        last_seen = node["last_successful_poll_at"] or workload.started_at
        workload_lose(
            workload=workload,
            at=last_seen.replace(second=0, microsecond=0),
            reason="The node stopped answering.",
            now=now,
        )
