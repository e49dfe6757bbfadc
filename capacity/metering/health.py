"""Node health from poll results: online, degraded, unreachable; backoff; partner emails.

Metering moves a node only between the statuses it owns (``MANAGED_STATUSES``); a node in
maintenance, curtailed, pending or retired keeps the status its partner or the
enrollment gave it. Every transition is a conditional ``UPDATE``, and every email is
sent on commit after a conditional update that only one poll can win, so each outage,
recovery and integrity incident mails the partner exactly once.

- A failed poll (no answer, timeout, non-200): ``unreachable``, and the next poll waits
  ``interval x 2^(failures-1)``, capped at ``MAX_BACKOFF_SECONDS``.
- An answer whose signature or hash chain fails, or whose health shows a GPU in
  trouble: ``degraded``, with the reason the partner sees on the node page.
- Otherwise ``online``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.db import connection, transaction

from capacity.metering import emails
from capacity.metering.models import NodePollState
from capacity.metering.polling import PollOutcome
from capacity.models import Node, NodeStatus

MANAGED_STATUSES = (NodeStatus.ONLINE, NodeStatus.DEGRADED, NodeStatus.UNREACHABLE)
MAX_BACKOFF_SECONDS = 600
# The partner hears about an outage once it has lasted this long.
UNREACHABLE_NOTICE_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class HealthSnapshot:
    """What health needs to know about a node before its poll (read with the targets)."""

    status: str
    degraded_reason: str
    unreachable: bool
    integrity_notified: bool


def _set_status(*, node_id: int, status: str) -> bool:
    """Move a node metering manages to ``status``; False when it is not ours or already there."""
    return bool(
        Node.objects.filter(pk=node_id, status__in=MANAGED_STATUSES)
        .exclude(status=status)
        .update(status=status)
    )


def record_failure(*, node_id: int, error: str, polled_at: datetime, interval_seconds: int) -> None:
    """A failed poll: count it, back off, mark the node unreachable."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                """
                UPDATE metering_nodepollstate
                SET consecutive_failures = consecutive_failures + 1,
                    backoff_seconds = least(%s, %s * power(2, least(consecutive_failures, 20))::bigint),
                    next_poll_at = %s + make_interval(
                        secs => least(%s, %s * power(2, least(consecutive_failures, 20))::bigint)),
                    last_poll_at = %s,
                    last_error = %s,
                    unreachable_since = coalesce(unreachable_since, %s)
                WHERE node_id = %s
                """,
                [
                    MAX_BACKOFF_SECONDS,
                    interval_seconds,
                    polled_at,
                    MAX_BACKOFF_SECONDS,
                    interval_seconds,
                    polled_at,
                    error[:2000],
                    polled_at,
                    node_id,
                ],
            )
        Node.objects.filter(pk=node_id).update(last_poll_at=polled_at)
        _set_status(node_id=node_id, status=NodeStatus.UNREACHABLE)


def _clear_outage(*, node_id: int) -> None:
    """End the node's outage; mail the partner iff they were told it started."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE metering_nodepollstate AS ps
            SET unreachable_since = NULL, unreachable_notified_at = NULL
            FROM (SELECT node_id, unreachable_notified_at FROM metering_nodepollstate
                  WHERE node_id = %s FOR UPDATE) AS old
            WHERE ps.node_id = old.node_id AND ps.unreachable_since IS NOT NULL
            RETURNING old.unreachable_notified_at
            """,
            [node_id],
        )
        row = cursor.fetchone()
    if row is not None and row[0] is not None:
        transaction.on_commit(partial(emails.send_node_recovered, node_id=node_id))


def apply_outcome(*, outcome: PollOutcome, before: HealthSnapshot, interval_seconds: int) -> str:
    """Move the node's status after its pages are stored; returns the status it should have.

    Cheap when nothing changes (the common case): no statement at all.
    """
    if not outcome.succeeded:
        record_failure(
            node_id=outcome.node_id,
            error=outcome.error,
            polled_at=outcome.polled_at,
            interval_seconds=interval_seconds,
        )
        return NodeStatus.UNREACHABLE
    health_reason = outcome.health_problem
    if health_reason is None:  # health not asked this time: keep the last verdict
        health_reason = "" if before.integrity_notified else before.degraded_reason
    reason = outcome.integrity_problem or health_reason
    status = NodeStatus.DEGRADED if reason else NodeStatus.ONLINE
    changes_status = before.status in MANAGED_STATUSES and before.status != status
    new_incident = bool(outcome.integrity_problem) and not before.integrity_notified
    incident_over = not outcome.integrity_problem and before.integrity_notified
    if not (
        changes_status
        or before.unreachable
        or new_incident
        or incident_over
        or reason != before.degraded_reason
    ):
        return status
    with transaction.atomic():
        _set_status(node_id=outcome.node_id, status=status)
        NodePollState.objects.filter(node_id=outcome.node_id).exclude(
            degraded_reason=reason
        ).update(degraded_reason=reason)
        if before.unreachable:
            _clear_outage(node_id=outcome.node_id)
        if new_incident:
            won = NodePollState.objects.filter(
                node_id=outcome.node_id, integrity_notified_at__isnull=True
            ).update(integrity_notified_at=outcome.polled_at)
            if won:
                transaction.on_commit(
                    partial(
                        emails.send_node_integrity_problem,
                        node_id=outcome.node_id,
                        problem=outcome.integrity_problem,
                    )
                )
        if incident_over:
            NodePollState.objects.filter(node_id=outcome.node_id).update(integrity_notified_at=None)
    return status


def notify_long_outages(*, now: datetime) -> list[int]:
    """Mail the partners of nodes unreachable for 10 minutes, once per outage."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                """
                UPDATE metering_nodepollstate
                SET unreachable_notified_at = %s
                WHERE unreachable_since <= %s AND unreachable_notified_at IS NULL
                RETURNING node_id, unreachable_since
                """,
                [now, now - UNREACHABLE_NOTICE_AFTER],
            )
            rows = cursor.fetchall()
        for node_id, since in rows:
            transaction.on_commit(
                partial(emails.send_node_unreachable, node_id=node_id, since=since)
            )
    return [node_id for node_id, _ in rows]
