"""The sweep: which nodes are due, claimed so that no two workers poll the same node.

Beat starts ``tasks.sweep`` every poll interval. The sweep makes sure every pollable node
has a poll state, mails partners about long outages, then claims due nodes in chunks
with one statement each::

    UPDATE metering_nodepollstate SET next_poll_at = now + lease
    WHERE node_id IN (SELECT … WHERE next_poll_at <= now … FOR UPDATE SKIP LOCKED LIMIT n)
    RETURNING node_id

A claimed node is not due again until its lease (one interval) runs out, so a second
sweep, on this worker or another, skips it; if the batch that claimed it dies, the
node simply falls due again. Each chunk is handed to ``enqueue`` (``poll_batch.delay``)
on commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.db import connection, transaction

from capacity.metering import health
from capacity.models import NodeStatus

DEFAULT_BATCH_SIZE = 200
# Statuses never polled: no agent yet, or gone for good.
UNPOLLED_STATUSES = (NodeStatus.PENDING, NodeStatus.RETIRED)

_POLLABLE = """
    n.status NOT IN (%(pending)s, %(retired)s)
    AND n.agent_url <> '' AND n.poll_token_ciphertext <> '' AND n.agent_public_key <> ''
"""


@dataclass(frozen=True)
class SweepResult:
    claimed: int
    batches: int
    outage_notices: int


def ensure_poll_states(*, now: datetime) -> int:
    """Create the missing poll states of pollable nodes (due at once); how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO metering_nodepollstate (
                node_id, next_poll_at, journal_epoch, last_seq, last_hash, gpu_window_ends,
                consecutive_failures, backoff_seconds, last_error, degraded_reason
            )
            SELECT n.id, %(now)s, '', 0, repeat('0', 64), '{{}}'::jsonb, 0, 0, '', ''
            FROM capacity_node AS n
            WHERE {_POLLABLE}
            ON CONFLICT (node_id) DO NOTHING
            """,  # noqa: S608 (constant fragment, values are parameters)
            {"now": now, "pending": NodeStatus.PENDING, "retired": NodeStatus.RETIRED},
        )
        return cursor.rowcount


def claim_due_nodes(*, now: datetime, limit: int, lease: timedelta) -> list[int]:
    """Claim up to ``limit`` due nodes for one batch (see the module docstring)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE metering_nodepollstate
            SET next_poll_at = %(lease_until)s
            WHERE node_id IN (
                SELECT ps.node_id
                FROM metering_nodepollstate AS ps
                JOIN capacity_node AS n ON n.id = ps.node_id
                WHERE ps.next_poll_at <= %(now)s AND {_POLLABLE}
                ORDER BY ps.next_poll_at
                LIMIT %(limit)s
                FOR UPDATE OF ps SKIP LOCKED
            )
            RETURNING node_id
            """,  # noqa: S608 (constant fragment, values are parameters)
            {
                "now": now,
                "lease_until": now + lease,
                "limit": limit,
                "pending": NodeStatus.PENDING,
                "retired": NodeStatus.RETIRED,
            },
        )
        return sorted(row[0] for row in cursor.fetchall())


def sweep(
    *,
    now: datetime,
    interval_seconds: int,
    enqueue: Callable[[list[int]], object],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_nodes: int | None = None,
) -> SweepResult:
    """Claim every due node, ``batch_size`` at a time, and enqueue each batch on commit."""
    ensure_poll_states(now=now)
    notices = health.notify_long_outages(now=now)
    lease = timedelta(seconds=interval_seconds)
    claimed = batches = 0
    while max_nodes is None or claimed < max_nodes:
        limit = batch_size if max_nodes is None else min(batch_size, max_nodes - claimed)
        with transaction.atomic():
            node_ids = claim_due_nodes(now=now, limit=limit, lease=lease)
            if node_ids:
                transaction.on_commit(partial(enqueue, node_ids))
        if not node_ids:
            break
        claimed += len(node_ids)
        batches += 1
    return SweepResult(claimed=claimed, batches=batches, outage_notices=len(notices))
