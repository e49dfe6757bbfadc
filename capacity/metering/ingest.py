"""Storing a polled page: ONE SQL statement, hence one transaction, per page.

``store_page`` sends a single statement whose data-modifying CTEs

1. advance the node's cursor *only if it is still where the page was fetched from*
   (``UPDATE … WHERE journal_epoch = from AND last_seq = from``) and record the poll;
2. insert the page's records ``ON CONFLICT (node, journal_epoch, seq) DO NOTHING
   RETURNING`` — gated on (1), so a repeated or concurrent poll of the same page inserts
   nothing, and a concurrent one blocks on (1)'s row lock, then finds the cursor moved;
3. add to the hourly rollups exactly what (2) returned (``ON CONFLICT DO UPDATE SET
   x = x + EXCLUDED.x``): only rows actually inserted are ever counted;
4. quarantine the refused records (``ON CONFLICT DO NOTHING``), OR the observed minutes
   into the availability bitmaps, and stamp the node's last successful poll.

PostgreSQL runs a statement atomically, so either all of that happened or none of it;
a crash at any point loses nothing because the agent still holds every record past the
stored cursor. Arrays travel as ``unnest`` parameters and the statement is prepared
once per connection, so a page costs one round trip whatever its size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg
from django.db import connection

from capacity.metering.polling import PageToStore

_STORE_PAGE_SQL = """
WITH moved AS (
    UPDATE metering_nodepollstate
    SET journal_epoch = %(to_epoch)s,
        last_seq = %(to_seq)s,
        last_hash = %(to_hash)s,
        gpu_window_ends = gpu_window_ends || %(window_ends)s::jsonb,
        last_poll_at = %(polled_at)s,
        last_success_at = coalesce(%(success_at)s, last_success_at),
        consecutive_failures = 0,
        backoff_seconds = 0,
        last_error = %(problem)s,
        next_poll_at = %(next_poll_at)s
    WHERE node_id = %(node_id)s
      AND journal_epoch = %(from_epoch)s
      AND last_seq = %(from_seq)s
    RETURNING node_id
), inserted AS (
    INSERT INTO metering_usagerecord (
        node_id, journal_epoch, seq, record_hash, gpu_id, window_start, window_end,
        workload_kind, workload_ref, busy_ms, energy_mj, input_tokens, output_tokens,
        requests, received_at
    )
    SELECT moved.node_id, %(to_epoch)s, r.seq, r.record_hash, r.gpu_id, r.window_start,
           r.window_end, r.workload_kind, r.workload_ref, r.busy_ms, r.energy_mj,
           r.input_tokens, r.output_tokens, r.requests, %(polled_at)s
    FROM moved, unnest(
        %(seq)s::bigint[], %(record_hash)s::text[], %(gpu_id)s::bigint[],
        %(window_start)s::timestamptz[], %(window_end)s::timestamptz[],
        %(workload_kind)s::text[], %(workload_ref)s::text[], %(busy_ms)s::bigint[],
        %(energy_mj)s::bigint[], %(input_tokens)s::bigint[], %(output_tokens)s::bigint[],
        %(requests)s::bigint[]
    ) AS r(seq, record_hash, gpu_id, window_start, window_end, workload_kind, workload_ref,
           busy_ms, energy_mj, input_tokens, output_tokens, requests)
    ON CONFLICT (node_id, journal_epoch, seq) DO NOTHING
    RETURNING gpu_id, workload_kind, workload_ref, window_start, busy_ms, energy_mj,
              input_tokens, output_tokens, requests
), rolled AS (
    INSERT INTO metering_hourlyusage AS h (
        node_id, gpu_id, workload_kind, workload_ref, hour, busy_ms, energy_mj,
        input_tokens, output_tokens, requests, record_count
    )
    SELECT %(node_id)s, gpu_id, workload_kind, coalesce(workload_ref, ''),
           date_trunc('hour', window_start, 'UTC'), sum(busy_ms), sum(energy_mj),
           sum(input_tokens), sum(output_tokens), sum(requests), count(*)
    FROM inserted
    GROUP BY gpu_id, workload_kind, coalesce(workload_ref, ''),
             date_trunc('hour', window_start, 'UTC')
    ON CONFLICT (gpu_id, workload_kind, workload_ref, hour) DO UPDATE SET
        busy_ms = h.busy_ms + EXCLUDED.busy_ms,
        energy_mj = h.energy_mj + EXCLUDED.energy_mj,
        input_tokens = h.input_tokens + EXCLUDED.input_tokens,
        output_tokens = h.output_tokens + EXCLUDED.output_tokens,
        requests = h.requests + EXCLUDED.requests,
        record_count = h.record_count + EXCLUDED.record_count
    RETURNING 1
), quarantined AS (
    INSERT INTO metering_quarantinedrecord (
        node_id, journal_epoch, seq, reason, detail, gpu_uuid, window_start, window_end,
        payload, received_at
    )
    SELECT moved.node_id, q.journal_epoch, q.seq, q.reason, q.detail, q.gpu_uuid,
           q.window_start, q.window_end, q.payload::jsonb, %(polled_at)s
    FROM moved, unnest(
        %(q_epoch)s::text[], %(q_seq)s::bigint[], %(q_reason)s::text[], %(q_detail)s::text[],
        %(q_gpu_uuid)s::text[], %(q_window_start)s::timestamptz[],
        %(q_window_end)s::timestamptz[], %(q_payload)s::text[]
    ) AS q(journal_epoch, seq, reason, detail, gpu_uuid, window_start, window_end, payload)
    ON CONFLICT (node_id, journal_epoch, seq) DO NOTHING
    RETURNING 1
), available AS (
    INSERT INTO metering_gpuavailabilityday AS a (gpu_id, day, minutes)
    SELECT m.gpu_id, m.day, m.minutes::bit(1440)
    FROM moved, unnest(%(a_gpu_id)s::bigint[], %(a_day)s::date[], %(a_minutes)s::text[])
        AS m(gpu_id, day, minutes)
    ON CONFLICT (gpu_id, day) DO UPDATE SET minutes = a.minutes | EXCLUDED.minutes
    RETURNING 1
), touched AS (
    UPDATE capacity_node AS n
    SET last_poll_at = %(polled_at)s,
        last_successful_poll_at = coalesce(%(success_at)s, n.last_successful_poll_at),
        journal_epoch = %(to_epoch)s,
        gpu_utilization_pct = coalesce(%(gpu_utilization_pct)s, n.gpu_utilization_pct),
        updated_at = %(polled_at)s
    FROM moved
    WHERE n.id = moved.node_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM inserted),
       (SELECT count(*) FROM quarantined), (SELECT count(*) FROM rolled),
       (SELECT count(*) FROM available), (SELECT count(*) FROM touched)
"""


@dataclass(frozen=True)
class StoredPage:
    """What a page's statement did: ``moved`` False means another poll got there first."""

    moved: bool
    inserted: int
    quarantined: int


def _page_params(
    *,
    node_id: int,
    page: PageToStore,
    polled_at: datetime,
    next_poll_at: datetime,
    problem: str,
    gpu_utilization_pct: int | None,
) -> dict[str, object]:
    accepted, quarantined, masks = page.accepted, page.quarantined, page.minute_masks
    return {
        "node_id": node_id,
        "from_epoch": page.from_epoch,
        "from_seq": page.from_seq,
        "to_epoch": page.to_epoch,
        "to_seq": page.to_seq,
        "to_hash": page.to_hash,
        "window_ends": json.dumps(page.gpu_window_ends),
        "polled_at": polled_at,
        # An agent whose answers do not verify was reached but not successfully polled.
        "success_at": None if problem else polled_at,
        "problem": problem,
        "next_poll_at": next_poll_at,
        "gpu_utilization_pct": gpu_utilization_pct,
        "seq": [r.seq for r in accepted],
        "record_hash": [r.record_hash for r in accepted],
        "gpu_id": [r.gpu_device_id for r in accepted],
        "window_start": [r.window_start for r in accepted],
        "window_end": [r.window_end for r in accepted],
        "workload_kind": [r.workload_kind for r in accepted],
        "workload_ref": [r.workload_ref for r in accepted],
        "busy_ms": [r.busy_ms for r in accepted],
        "energy_mj": [r.energy_mj for r in accepted],
        "input_tokens": [r.input_tokens for r in accepted],
        "output_tokens": [r.output_tokens for r in accepted],
        "requests": [r.requests for r in accepted],
        "q_epoch": [q.journal_epoch for q in quarantined],
        "q_seq": [q.seq for q in quarantined],
        "q_reason": [q.rejection.reason for q in quarantined],
        "q_detail": [q.rejection.detail for q in quarantined],
        "q_gpu_uuid": [q.rejection.gpu_uuid for q in quarantined],
        "q_window_start": [q.rejection.window_start for q in quarantined],
        "q_window_end": [q.rejection.window_end for q in quarantined],
        "q_payload": [json.dumps(q.payload) for q in quarantined],
        "a_gpu_id": [m.gpu_device_id for m in masks],
        "a_day": [m.day for m in masks],
        "a_minutes": [m.bits for m in masks],
    }


def _raw_cursor() -> psycopg.Cursor:
    """A server-side-binding cursor on Django's own connection (same transaction state).

    Django's default cursors bind client-side; this one lets the statement be prepared.
    """
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def store_page(
    *,
    node_id: int,
    page: PageToStore,
    polled_at: datetime,
    next_poll_at: datetime,
    problem: str = "",
    gpu_utilization_pct: int | None = None,
) -> StoredPage:
    """Store one page atomically (see the module docstring); idempotent."""
    params = _page_params(
        node_id=node_id,
        page=page,
        polled_at=polled_at,
        next_poll_at=next_poll_at,
        problem=problem,
        gpu_utilization_pct=gpu_utilization_pct,
    )
    with connection.wrap_database_errors, _raw_cursor() as cursor:
        cursor.execute(_STORE_PAGE_SQL, params, prepare=True)
        row = cursor.fetchone()
    assert row is not None
    return StoredPage(moved=bool(row[0]), inserted=int(row[1]), quarantined=int(row[2]))


@contextmanager
def asynchronous_commit() -> Iterator[None]:
    """Let this connection's commits return before the WAL reaches disk, for a batch.

    Safe for ingestion, and only for it: a page's records and the cursor that covers
    them commit in one transaction, and WAL is replayed in order, so a database crash
    can lose the last few pages only *together with* their cursor moves; the next poll
    fetches them again from the agent, whose journal is fsynced. What is lost is time,
    never usage. Reset on exit so other tasks sharing the connection keep durable
    commits (a killed worker takes its connection, and the setting, with it).
    """
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    try:
        yield
    finally:
        if connection.connection is not None and connection.is_usable():
            with connection.cursor() as cursor:
                cursor.execute("RESET synchronous_commit")
