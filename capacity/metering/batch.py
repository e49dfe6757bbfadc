"""Poll a batch of claimed nodes and store what they said: the body of ``tasks.poll_batch``.

Reads every node's cursor, key, token and GPUs in three queries, polls the nodes
concurrently (``polling.poll_concurrently``, network on a helper thread) and stores the
pages of whichever nodes are done, in groups (``ingest.store_pages``, one statement per
group holding at most one page per node, in this thread), then moves each node's health
(``health.apply_outcome``). Running a batch twice,
or two batches over the same node at once, stores every record once: the cursor is
moved conditionally in the same statement that inserts the records.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from capacity.metering import assignments, health, health_history, ingest
from capacity.metering.models import NodePollState
from capacity.metering.polling import (
    DEFAULT_CONCURRENCY,
    PollOutcome,
    PollTarget,
    health_due,
    poll_concurrently,
)
from capacity.metering.selectors import served_products
from capacity.metering.sweep import UNPOLLED_STATUSES
from capacity.metering.validation import GpuRef
from capacity.models import GpuDevice, NodeStatus
from config import crypto

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    polled: int = 0
    failed: int = 0
    pages: int = 0
    inserted: int = 0
    quarantined: int = 0
    # Pages another poll had already stored (the cursor had moved on).
    skipped_pages: int = 0


def load_targets(
    node_ids: Sequence[int],
    *,
    now: datetime,
    interval_seconds: int,
    always_check_health: bool = False,
) -> tuple[list[PollTarget], dict[int, health.HealthSnapshot], dict[int, str]]:
    """Targets to poll, their health before the poll, and nodes that cannot be polled."""
    gpus: dict[int, dict[str, int]] = defaultdict(dict)
    for node_id, uuid, device_id in GpuDevice.objects.filter(node_id__in=node_ids).values_list(
        "node_id", "uuid", "id"
    ):
        gpus[node_id][uuid] = device_id
    served = served_products(node_ids=node_ids)
    plans = assignments.load_plans(node_ids=node_ids, now=now)
    rows = (
        NodePollState.objects.filter(node_id__in=node_ids)
        .exclude(node__status__in=UNPOLLED_STATUSES)
        .values_list(
            "node_id",
            "journal_epoch",
            "last_seq",
            "last_hash",
            "gpu_window_ends",
            "unreachable_since",
            "integrity_notified_at",
            "degraded_reason",
            "node__agent_url",
            "node__poll_token_ciphertext",
            "node__agent_public_key",
            "node__status",
            "node__gpu_model__max_power_w",
        )
    )
    targets, snapshots, unpollable = [], {}, {}
    for (
        node_id,
        epoch,
        last_seq,
        last_hash,
        window_ends,
        unreachable_since,
        integrity_notified_at,
        degraded_reason,
        agent_url,
        token_ciphertext,
        public_key,
        status,
        max_power_w,
    ) in rows:
        snapshots[node_id] = health.HealthSnapshot(
            status=status,
            degraded_reason=degraded_reason,
            unreachable=unreachable_since is not None,
            integrity_notified=integrity_notified_at is not None,
        )
        try:
            token = crypto.decrypt_str(token_ciphertext)
        except crypto.DecryptionError:
            unpollable[node_id] = "the stored poll token cannot be decrypted"
            continue
        targets.append(
            PollTarget(
                node_id=node_id,
                agent_url=agent_url,
                token=token,
                public_key=public_key,
                journal_epoch=epoch,
                last_seq=last_seq,
                last_hash=last_hash,
                gpu_window_ends=window_ends,
                gpus={
                    uuid: GpuRef(device_id=device_id, max_power_w=max_power_w)
                    for uuid, device_id in gpus[node_id].items()
                },
                served_products=served.get(node_id, {}),
                assignments=plans.get(node_id, assignments.NodeAssignmentPlan()),
                # A node that is not online gets its health asked on every poll.
                check_health=always_check_health
                or status != NodeStatus.ONLINE
                or health_due(node_id=node_id, polled_at=now, interval_seconds=interval_seconds),
            )
        )
    return targets, snapshots, unpollable


def poll_and_store(
    node_ids: Sequence[int],
    *,
    now: datetime,
    interval_seconds: int,
    concurrency: int = DEFAULT_CONCURRENCY,
    transport: httpx.AsyncBaseTransport | None = None,
    always_check_health: bool = False,
) -> BatchResult:
    """Poll ``node_ids`` and store every page; see the module docstring."""
    result = BatchResult()
    targets, snapshots, unpollable = load_targets(
        node_ids,
        now=now,
        interval_seconds=interval_seconds,
        always_check_health=always_check_health,
    )
    plans = {target.node_id: target.assignments for target in targets}
    for node_id, error in unpollable.items():
        health.record_failure(
            node_id=node_id, error=error, polled_at=now, interval_seconds=interval_seconds
        )
        result.failed += 1
    # Due again half an interval from now: beat's sweeps come every interval, and this
    # batch runs a moment after the sweep that claimed the node; due a whole interval
    # from now, the node would miss the next sweep by that moment and be polled only
    # every second interval.
    next_poll_at = now + timedelta(seconds=interval_seconds) / 2
    with ingest.asynchronous_commit():
        for outcomes in poll_concurrently(
            targets,
            polled_at=now,
            concurrency=concurrency,
            transport=transport,
            max_group=ingest.MAX_GROUP_PAGES,
        ):
            _store_outcomes(outcomes, now=now, next_poll_at=next_poll_at, result=result)
            for outcome in outcomes:
                result.polled += 1
                if not outcome.succeeded:
                    result.failed += 1
                health.apply_outcome(
                    outcome=outcome,
                    before=snapshots[outcome.node_id],
                    interval_seconds=interval_seconds,
                )
            reports = []
            for outcome in outcomes:
                report = outcome.assignment_report
                if report is not None:
                    report.poll_failed = not outcome.succeeded
                    if report.is_news(plans[outcome.node_id]):
                        reports.append(report)
            assignments.apply_reports(reports=reports, now=now)
            health_history.record_samples(
                [
                    (outcome.node_id, outcome.polled_at, outcome.health_sample)
                    for outcome in outcomes
                    if outcome.health_sample is not None
                ]
            )
    return result


def _store_outcomes(
    outcomes: Sequence[PollOutcome], *, now: datetime, next_poll_at: datetime, result: BatchResult
) -> None:
    """Store the outcomes' pages: round k stores every node's k-th page in one statement.

    A node's next page is stored only after its previous one moved the cursor; when it
    did not (another poll stored from that cursor first), the node's later pages are
    skipped, since they start from a cursor that is no longer there.
    """
    pending = {outcome.node_id: (outcome, list(outcome.pages)) for outcome in outcomes}
    while pending:
        group = [
            ingest.PageOfNode(
                node_id=node_id,
                page=pages[0],
                problem=outcome.integrity_problem,
                gpu_utilization_pct=outcome.gpu_utilization_pct,
            )
            for node_id, (outcome, pages) in pending.items()
            if pages
        ]
        if not group:
            return
        stored = ingest.store_pages(group, polled_at=now, next_poll_at=next_poll_at)
        for node_id, page in stored.items():
            pages = pending[node_id][1]
            result.pages += 1
            if page.moved:
                pages.pop(0)
                result.inserted += page.inserted
                result.quarantined += page.quarantined
            else:
                result.skipped_pages += len(pages)
                pages.clear()
