"""Contracts' side of assignments on metering's polls (``capacity.metering.assignments``).

Registered in ``ContractsConfig.ready``; metering calls it without importing contracts.

- ``load_plans``: per node, what covers its GPUs (every workload that has not ended,
  and those that ended within ``LATE_RECORDS`` so late records of their last windows are
  still believed), the signed body to push when the node's generation is ahead of its
  agent's and no backoff holds it back, and the digest of the workloads last read.
- ``apply_reports``: the generation the agent holds; a failed push backs off (30 s
  doubling up to 15 min); workloads' states from the list the poll read (a failure ends
  the workload at the moment the agent says it failed, with whose fault it was,
  ``reported_fault``); a node that went unreachable
  loses its running instances at the last minute it was seen healthy. A batch's reports
  are applied together, set-based (one ``UPDATE`` for the workloads that moved, one
  for the nodes' rows), as ingest stores pages: row by row cost ~19 ms a node.

The wire (body shape, signature) is docs/workloads.md, built by the agent package's own
``capacity.agent.assignments`` so both sides encode it the same way.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils.dateparse import parse_datetime

from capacity.metering.assignments import (
    AssignmentPush,
    AssignmentReport,
    NodeAssignmentPlan,
)
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
    # The generations before the workloads: a change committed between the two reads is
    # then in the body signed under an older generation (harmless: the next poll pushes
    # the newer one), never missing from a body signed under its own generation (the
    # agent would hold that generation and the change would never reach it).
    rows = list(
        NodeAssignments.objects.filter(node_id__in=list(node_ids)).values_list(
            "node_id",
            "generation",
            "agent_generation",
            "digest",
            "next_attempt_at",
            "node__agent_public_key",
        )
    )
    covers, desired = assignment_covers(node_ids=node_ids, now=now)
    plans: dict[int, NodeAssignmentPlan] = {}
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
    """Store what the polls of a batch learnt (see the module docstring), the whole batch
    in a few statements (``_apply_batch``). Should one statement fail for one node's
    answer (a value the database refuses), the batch is applied again node by node, so
    only that node's report is lost (read again on its next poll)."""
    if not reports:
        return
    if len({report.node_id for report in reports}) == len(reports):
        try:
            with transaction.atomic():
                _apply_batch(reports, now=now)
            return
        except (DatabaseError, ValidationError):
            logger.warning("assignments reports applied node by node", exc_info=True)
    for report in reports:  # one node's failure is not the batch's
        try:
            with transaction.atomic():
                _apply_batch([report], now=now)
        except (DatabaseError, ValidationError):
            logger.exception("assignments report of node %s not applied", report.node_id)


@dataclass(frozen=True)
class _StateChange:
    """A workload the agent runs in another state or with other connection details."""

    workload_id: int
    state: str
    # None: the state did not change, nor does ``state_since``.
    since: datetime | None
    connection: dict[str, object]


@dataclass
class _NodeNews:
    """One node's report as rows to write: its workloads' changes, failures, row fields."""

    report: AssignmentReport
    changes: list[_StateChange] = field(default_factory=list)
    # (workload, when it failed, why, whose fault): ended through ``workload_fail``.
    failures: list[tuple[Workload, datetime, str, WorkloadFault]] = field(default_factory=list)


def _apply_batch(reports: Sequence[AssignmentReport], *, now: datetime) -> None:
    """``apply_reports`` for reports of distinct nodes, in the caller's transaction:
    nodes whose poll failed may lose their instances; for the others, one query of the
    active workloads of the nodes read, one ``UPDATE`` of those whose state or connection
    moved, the failures ended, missing rows created, and one ``UPDATE`` of the nodes'
    rows (generations, push attempts and backoff, digests). Workloads are written before
    the rows, the order every other writer locks them in."""
    _lose_instances_if_unreachable(
        node_ids=[report.node_id for report in reports if report.poll_failed], now=now
    )
    answered = [report for report in reports if not report.poll_failed]
    read = [report for report in answered if report.workloads is not None]
    active: dict[int, dict[str, Workload]] = defaultdict(dict)
    if read:
        for workload in Workload.objects.active().filter(
            node_id__in=[report.node_id for report in read]
        ):
            active[workload.node_id][workload.public_id] = workload
    news: list[_NodeNews] = []
    for report in answered:
        try:
            news.append(_node_news(report, active=active[report.node_id], now=now))
        except ValueError:  # a malformed ``since``: this node's report is dropped
            logger.exception("assignments report of node %s not applied", report.node_id)
    _move_workloads([change for item in news for change in item.changes])
    for item in news:
        for workload, failed_at, reason, fault in item.failures:
            workload_fail(workload=workload, at=failed_at, reason=reason, fault=fault, now=now)
    _store_node_rows([item.report for item in news], now=now)


def _node_news(
    report: AssignmentReport, *, active: dict[str, Workload], now: datetime
) -> _NodeNews:
    """What ``report``'s workloads list changes of the node's ``active`` workloads, one
    decision per workload: a failure (the first reported) wins over any other state."""
    news = _NodeNews(report=report)
    if report.workloads is None or report.agent_digest is None:
        return news
    changes: dict[int, _StateChange] = {}
    failed: set[int] = set()
    for item in report.workloads:
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
            # A workload the platform still wants that stopped by itself has failed: not
            # before it entered the state the platform last stored (the agent cannot take
            # back time it reported running, and billing stops at the failure).
            since = max(since, workload.state_since)
            if workload.pk not in failed:
                failed.add(workload.pk)
                news.failures.append(
                    (
                        workload,
                        since,
                        reason or "The workload stopped on the node.",
                        reported_fault(workload, item.get("fault")),
                    )
                )
            continue
        if state not in _RUNNING_STATES:
            continue
        details = connection_details(item.get("connection"), ports=workload.ports)
        if workload.state == state and workload.connection == details:
            continue
        changes[workload.pk] = _StateChange(
            workload_id=workload.pk,
            state=state,
            since=since if workload.state != state else None,
            connection=details,
        )
    news.changes = [change for pk, change in changes.items() if pk not in failed]
    return news


_MOVE_WORKLOADS_SQL = """
UPDATE {workloads} AS workload
SET state = news.state, state_since = COALESCE(news.since, workload.state_since),
    connection = news.connection::jsonb, reason = ''
FROM unnest(%(ids)s::bigint[], %(states)s::text[], %(since)s::timestamptz[],
            %(connections)s::text[]) AS news(id, state, since, connection)
WHERE workload.id = news.id AND NOT workload.state = ANY(%(ended)s::text[])
"""


_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9][A-Za-z0-9.:-]{0,252}(/[A-Za-z0-9._~/-]{0,200})?$")


def connection_details(details: object, *, ports: Sequence[int]) -> dict[str, object]:
    """What of an agent's ``connection`` may be shown to the buyer, who pastes the SSH
    command built from it into a shell: a host name or address (no leading ``-``, no
    spaces or shell characters), the mapping of the workload's own ports to port numbers,
    an ``http(s)`` endpoint. Anything else the agent sent is dropped."""
    if not isinstance(details, dict) or len(str(details)) > _MAX_CONNECTION_CHARS:
        return {}
    clean: dict[str, object] = {}
    host = details.get("host")
    if isinstance(host, str) and (host == "" or _HOST.match(host)):
        clean["host"] = host
    mapped = details.get("ports")
    if isinstance(mapped, dict):
        asked = {str(port) for port in ports}
        clean["ports"] = {
            str(port): number
            for port, number in mapped.items()
            if str(port) in asked
            and isinstance(number, int)
            and not isinstance(number, bool)
            and 1 <= number <= 65535
        }
    endpoint = details.get("endpoint")
    if isinstance(endpoint, str) and (endpoint == "" or _ENDPOINT.match(endpoint)):
        clean["endpoint"] = endpoint
    return clean


def reported_fault(workload: Workload, fault: object) -> WorkloadFault:
    """Whose fault a failure the agent reports is (docs/workloads.md "Whose fault"): the
    buyer's only when the agent says so of a container (the buyer's image); a
    deployment runs the catalogue's engine, so its failures are always the node's, and
    so is a failure the agent does not classify."""
    if workload.kind == WorkloadKind.CONTAINER and fault == WorkloadFault.BUYER:
        return WorkloadFault.BUYER
    return WorkloadFault.NODE


def _move_workloads(changes: Sequence[_StateChange]) -> None:
    """One ``UPDATE`` for every workload the agents report in a new state or with new
    connection details (one already ended meanwhile stays ended)."""
    if not changes:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _MOVE_WORKLOADS_SQL.format(workloads=Workload._meta.db_table),
            {
                "ids": [change.workload_id for change in changes],
                "states": [change.state for change in changes],
                "since": [change.since for change in changes],
                "connections": [json.dumps(change.connection) for change in changes],
                "ended": [str(state) for state in ENDED_WORKLOAD_STATES],
            },
        )


_CREATE_ROWS_SQL = """
INSERT INTO {rows} (node_id, generation, agent_generation, digest, next_attempt_at, attempts,
                    last_error, updated_at)
SELECT node_id, 0, 0, '', NULL, 0, '', %(now)s FROM unnest(%(node_ids)s::bigint[]) AS node_id
ON CONFLICT (node_id) DO NOTHING
"""

# ``generation`` is never written: a change made meanwhile (a failure just applied)
# raised it. ``agent_generation`` is what the agent holds now, also when lower than
# stored (an agent whose disk was wiped holds 0: it is pushed the whole state again). The backoff after a failed push is ``backoff_seconds`` of the attempts so
# far plus one, looked up in ``%(backoff_s)s``.
_STORE_ROWS_SQL = """
UPDATE {rows} AS assigned
SET agent_generation = COALESCE(GREATEST(news.agent_generation, news.accepted_generation),
                                assigned.agent_generation),
    attempts = CASE WHEN news.push_failed THEN assigned.attempts + 1
                    WHEN news.accepted_generation IS NOT NULL THEN 0
                    ELSE assigned.attempts END,
    next_attempt_at = CASE
        WHEN news.push_failed THEN %(now)s + make_interval(
            secs => (%(backoff_s)s::integer[])[LEAST(assigned.attempts + 1, %(backoff_steps)s)])
        WHEN news.accepted_generation IS NOT NULL THEN NULL
        ELSE assigned.next_attempt_at END,
    last_error = CASE WHEN news.push_failed THEN news.push_error
                      WHEN news.accepted_generation IS NOT NULL THEN ''
                      ELSE assigned.last_error END,
    digest = COALESCE(news.digest, assigned.digest),
    updated_at = %(now)s
FROM unnest(%(node_ids)s::bigint[], %(agent_generations)s::bigint[],
            %(accepted_generations)s::bigint[], %(push_failed)s::boolean[],
            %(push_errors)s::text[], %(digests)s::text[])
     AS news(node_id, agent_generation, accepted_generation, push_failed, push_error, digest)
WHERE assigned.node_id = news.node_id
"""


def _backoff_steps() -> list[int]:
    """``backoff_seconds`` of 1, 2, … failed attempts, up to the first at the maximum."""
    steps = [backoff_seconds(1)]
    while steps[-1] < MAX_BACKOFF_S:
        steps.append(backoff_seconds(len(steps) + 1))
    return steps


def _store_node_rows(reports: Sequence[AssignmentReport], *, now: datetime) -> None:
    """The nodes' rows in one ``UPDATE``: the generation the agent holds (reported, or
    just accepted), a failed push's attempt and backoff, the digest of a list read; a
    node with no row yet gets one when its workloads were read."""
    if not reports:
        return
    read = [report.node_id for report in reports if report.workloads is not None]
    tables = {"rows": NodeAssignments._meta.db_table}
    backoff = _backoff_steps()
    with connection.cursor() as cursor:
        if read:
            cursor.execute(_CREATE_ROWS_SQL.format(**tables), {"now": now, "node_ids": read})
        cursor.execute(
            _STORE_ROWS_SQL.format(**tables),
            {
                "now": now,
                "backoff_s": backoff,
                "backoff_steps": len(backoff),
                "node_ids": [report.node_id for report in reports],
                "agent_generations": [report.agent_generation for report in reports],
                "accepted_generations": [
                    report.pushed_generation if not report.push_error else None
                    for report in reports
                ],
                "push_failed": [
                    report.pushed_generation is not None and bool(report.push_error)
                    for report in reports
                ],
                "push_errors": [report.push_error[:2000] for report in reports],
                "digests": [
                    report.agent_digest if report.workloads is not None else None
                    for report in reports
                ],
            },
        )


def _lose_instances_if_unreachable(*, node_ids: Sequence[int], now: datetime) -> None:
    """Nodes metering has found unreachable for ``LOST_AFTER`` lose their running
    instances, at the last minute each was polled successfully (their GPUs are billed up
    to there). Reserved workloads stay: the reservation holds the GPUs, the agent
    converges again when the node is back, and the SLA counts the minutes down."""
    if not node_ids:
        return
    last_seen = dict(
        Node.objects.filter(
            pk__in=list(node_ids),
            status=NodeStatus.UNREACHABLE,
            poll_state__unreachable_since__lte=now - LOST_AFTER,
        ).values_list("pk", "last_successful_poll_at")
    )
    if not last_seen:
        return
    instances = Workload.objects.active().filter(
        node_id__in=list(last_seen), line__kind=LineKind.ON_DEMAND_GPU
    )
    for workload in instances:
        seen = last_seen[workload.node_id] or workload.started_at
        workload_lose(
            workload=workload,
            at=seen.replace(second=0, microsecond=0),
            reason="The node stopped answering.",
            now=now,
        )
