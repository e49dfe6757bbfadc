"""Storing polled pages: ONE SQL statement, hence one transaction, per group of pages.

``store_pages`` stores the pages of up to ``MAX_GROUP_PAGES`` different nodes (at most
one page per node) with a single statement whose data-modifying CTEs

1. advance each node's cursor *only if it is still where that page was fetched from*
   (``UPDATE … FROM pages WHERE journal_epoch = from AND last_seq = from``) and record
   the poll;
2. insert the records of the nodes that moved in (1) ``ON CONFLICT (node, journal_epoch,
   seq) DO NOTHING RETURNING`` — so a repeated or concurrent poll of the same page inserts
   nothing, and a concurrent one blocks on (1)'s row lock, then finds the cursor moved;
3. add to the hourly rollups exactly what (2) returned (``ON CONFLICT DO UPDATE SET
   x = x + EXCLUDED.x``): only rows actually inserted are ever counted;
4. for the inserted **receipt records** (one per inference request, docs/gateway.md
   points 6 and 8), fill the agent's side of ``InferenceRequest`` (``INSERT … ON
   CONFLICT (request_id) DO UPDATE … WHERE usage_record_id IS NULL``: the gateway's row
   may be there already; line, key, product, bounds and ``issued_at`` come from the
   signed receipt when it is not) and fix its billed tokens: ``least(gateway, agent)``
   per direction when the gateway's row is there, the agent's (within the receipt's
   bounds) when not; then add exactly the billed tokens of the rows it filled to
   ``InferenceUsageHour`` per (line, node, hour of the receipt's ``iat``);
5. quarantine the refused records (``ON CONFLICT DO NOTHING``), OR the observed minutes
   into the availability bitmaps, and stamp each node's last successful poll.

**Billed tokens are fixed once, when the agent's record is stored.** A gateway row that
lands later (its log batch was delayed past a poll; a killed gateway process loses its
batch altogether) fills the gateway's columns only and does not change what was billed:
invoices read the rollup and a finalized invoice is never edited, so billed figures
must not move after the fact, and the agent's figure is already bounded by the receipt
the platform signed. Such a request, like any whose witnesses differ, shows in
finance's disagreement list (``InferenceDisagreementHour``) with both figures. Batches
land within about a second and polls come every minute, so in normal operation the
gateway's row is there first and the buyer pays ``least(gateway, agent)``.

A ``rid`` already stored by an earlier poll is quarantined as ``receipt_replayed`` before
the statement runs (``_quarantine_replayed_receipts``), and the upsert's ``WHERE`` is
the database's guarantee that a replay is never billed twice.

The statement runs in its own transaction, so for every node of the group either all
of that happened or none of it: a node's page is never half stored, and a node whose
cursor had moved is left alone without disturbing the others. A crash at any point
loses nothing because the agents still hold every record past the stored cursors.
Grouping is only about round trips and commits (one per group instead of one per
page); it never mixes nodes' data, because every row of every table the statement
writes belongs to exactly one node (rollups and bitmaps are keyed by GPU). If a group's
statement fails for a reason in the data (a constraint, a value out of range), the
group is stored again page by page, each in its own statement, so one node's bad page
cannot hold the others back. Arrays travel as ``unnest`` parameters, so a group costs
one round trip whatever its size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction

from capacity.metering.models import InferenceRequest, QuarantineReason
from capacity.metering.polling import PageToStore, QuarantinedEntry
from capacity.metering.validation import Rejection

# Nodes' pages stored by one statement. Bigger groups save little once a round trip
# costs less than building the group's parameters, and a failing group is retried
# page by page.
MAX_GROUP_PAGES = 100

_STORE_PAGES_SQL = """
WITH page AS (
    SELECT *
    FROM unnest(
        %(node_id)s::bigint[], %(from_epoch)s::text[], %(from_seq)s::bigint[],
        %(to_epoch)s::text[], %(to_seq)s::bigint[], %(to_hash)s::text[],
        %(window_ends)s::text[], %(success_at)s::timestamptz[], %(problem)s::text[],
        %(gpu_utilization_pct)s::int[]
    ) AS p(node_id, from_epoch, from_seq, to_epoch, to_seq, to_hash, window_ends,
           success_at, problem, gpu_utilization_pct)
), moved AS (
    UPDATE metering_nodepollstate AS ps
    SET journal_epoch = p.to_epoch,
        last_seq = p.to_seq,
        last_hash = p.to_hash,
        gpu_window_ends = ps.gpu_window_ends || p.window_ends::jsonb,
        last_poll_at = %(polled_at)s,
        last_success_at = coalesce(p.success_at, ps.last_success_at),
        consecutive_failures = 0,
        backoff_seconds = 0,
        last_error = p.problem,
        next_poll_at = %(next_poll_at)s
    FROM page AS p
    WHERE ps.node_id = p.node_id
      AND ps.journal_epoch = p.from_epoch
      AND ps.last_seq = p.from_seq
    RETURNING ps.node_id, p.to_epoch, p.success_at, p.gpu_utilization_pct
), receipts AS MATERIALIZED (
    SELECT *
    FROM unnest(
        %(x_node_id)s::bigint[], %(x_seq)s::bigint[], %(x_rid)s::uuid[], %(x_line)s::bigint[],
        %(x_key)s::bigint[], %(x_product)s::text[], %(x_max_input)s::bigint[],
        %(x_max_output)s::bigint[], %(x_iat)s::bigint[]
    ) AS x(node_id, seq, rid, line_id, api_key_id, product, max_input_tokens,
           max_output_tokens, iat)
), inserted AS (
    INSERT INTO metering_usagerecord (
        node_id, journal_epoch, seq, record_hash, gpu_id, window_start, window_end,
        workload_kind, workload_ref, busy_ms, energy_mj, input_tokens, output_tokens,
        requests, received_at
    )
    SELECT m.node_id, m.to_epoch, r.seq, r.record_hash, r.gpu_id, r.window_start,
           r.window_end, r.workload_kind, r.workload_ref, r.busy_ms, r.energy_mj,
           r.input_tokens, r.output_tokens, r.requests, %(polled_at)s
    FROM unnest(
        %(r_node_id)s::bigint[], %(seq)s::bigint[], %(record_hash)s::text[],
        %(gpu_id)s::bigint[], %(window_start)s::timestamptz[],
        %(window_end)s::timestamptz[], %(workload_kind)s::text[], %(workload_ref)s::text[],
        %(busy_ms)s::bigint[], %(energy_mj)s::bigint[], %(input_tokens)s::bigint[],
        %(output_tokens)s::bigint[], %(requests)s::bigint[]
    ) AS r(node_id, seq, record_hash, gpu_id, window_start, window_end, workload_kind,
           workload_ref, busy_ms, energy_mj, input_tokens, output_tokens, requests)
    JOIN moved AS m ON m.node_id = r.node_id
    ON CONFLICT (node_id, journal_epoch, seq) DO NOTHING
    RETURNING id, node_id, seq, gpu_id, workload_kind, workload_ref, window_start,
              window_end, busy_ms, energy_mj, input_tokens, output_tokens, requests
), rolled AS (
    INSERT INTO metering_hourlyusage AS h (
        node_id, gpu_id, workload_kind, workload_ref, hour, busy_ms, energy_mj,
        input_tokens, output_tokens, requests, record_count
    )
    -- A receipt record is rolled up under its product's slug, not its (unique) rid.
    SELECT i.node_id, i.gpu_id, i.workload_kind, coalesce(x.product, i.workload_ref, ''),
           date_trunc('hour', i.window_start, 'UTC'), sum(i.busy_ms), sum(i.energy_mj),
           sum(i.input_tokens), sum(i.output_tokens), sum(i.requests), count(*)
    FROM inserted AS i
    LEFT JOIN receipts AS x ON x.node_id = i.node_id AND x.seq = i.seq
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (gpu_id, workload_kind, workload_ref, hour) DO UPDATE SET
        busy_ms = h.busy_ms + EXCLUDED.busy_ms,
        energy_mj = h.energy_mj + EXCLUDED.energy_mj,
        input_tokens = h.input_tokens + EXCLUDED.input_tokens,
        output_tokens = h.output_tokens + EXCLUDED.output_tokens,
        requests = h.requests + EXCLUDED.requests,
        record_count = h.record_count + EXCLUDED.record_count
), served AS (
    INSERT INTO metering_inferencerequest AS ir (
        request_id, node_id, api_key_id, line_id, product_slug, max_input_tokens,
        max_output_tokens, issued_at, usage_record_id, gpu_id, agent_input_tokens,
        agent_output_tokens, served_at, billed_input_tokens, billed_output_tokens
    )
    SELECT x.rid, i.node_id, x.api_key_id, x.line_id, x.product, x.max_input_tokens,
           x.max_output_tokens, to_timestamp(x.iat), i.id, i.gpu_id, i.input_tokens,
           i.output_tokens, i.window_end, i.input_tokens, i.output_tokens
    FROM inserted AS i
    JOIN receipts AS x ON x.node_id = i.node_id AND x.seq = i.seq
    ON CONFLICT (request_id) DO UPDATE SET
        usage_record_id = EXCLUDED.usage_record_id,
        gpu_id = EXCLUDED.gpu_id,
        agent_input_tokens = EXCLUDED.agent_input_tokens,
        agent_output_tokens = EXCLUDED.agent_output_tokens,
        served_at = EXCLUDED.served_at,
        billed_input_tokens = least(EXCLUDED.agent_input_tokens, ir.max_input_tokens,
                                    coalesce(ir.gateway_input_tokens, EXCLUDED.agent_input_tokens)),
        billed_output_tokens = least(EXCLUDED.agent_output_tokens, ir.max_output_tokens,
                                     coalesce(ir.gateway_output_tokens, EXCLUDED.agent_output_tokens))
    WHERE ir.usage_record_id IS NULL AND ir.node_id = EXCLUDED.node_id
    RETURNING ir.line_id, ir.node_id, ir.issued_at, ir.billed_input_tokens,
              ir.billed_output_tokens
), billed AS (
    INSERT INTO metering_inferenceusagehour AS u (
        line_id, node_id, hour, input_tokens, output_tokens, requests
    )
    SELECT line_id, node_id, date_trunc('hour', issued_at, 'UTC'), sum(billed_input_tokens),
           sum(billed_output_tokens), count(*)
    FROM served
    GROUP BY 1, 2, 3
    ON CONFLICT (line_id, node_id, hour) DO UPDATE SET
        input_tokens = u.input_tokens + EXCLUDED.input_tokens,
        output_tokens = u.output_tokens + EXCLUDED.output_tokens,
        requests = u.requests + EXCLUDED.requests
), quarantined AS (
    INSERT INTO metering_quarantinedrecord (
        node_id, journal_epoch, seq, reason, detail, gpu_uuid, window_start, window_end,
        payload, received_at
    )
    SELECT m.node_id, q.journal_epoch, q.seq, q.reason, q.detail, q.gpu_uuid,
           q.window_start, q.window_end, q.payload::jsonb, %(polled_at)s
    FROM unnest(
        %(q_node_id)s::bigint[], %(q_epoch)s::text[], %(q_seq)s::bigint[],
        %(q_reason)s::text[], %(q_detail)s::text[], %(q_gpu_uuid)s::text[],
        %(q_window_start)s::timestamptz[], %(q_window_end)s::timestamptz[],
        %(q_payload)s::text[]
    ) AS q(node_id, journal_epoch, seq, reason, detail, gpu_uuid, window_start, window_end,
           payload)
    JOIN moved AS m ON m.node_id = q.node_id
    ON CONFLICT (node_id, journal_epoch, seq) DO NOTHING
    RETURNING node_id
), available AS (
    INSERT INTO metering_gpuavailabilityday AS a (gpu_id, day, minutes)
    SELECT v.gpu_id, v.day, v.minutes::bit(1440)
    FROM unnest(
        %(a_node_id)s::bigint[], %(a_gpu_id)s::bigint[], %(a_day)s::date[],
        %(a_minutes)s::text[]
    ) AS v(node_id, gpu_id, day, minutes)
    JOIN moved AS m ON m.node_id = v.node_id
    ON CONFLICT (gpu_id, day) DO UPDATE SET minutes = a.minutes | EXCLUDED.minutes
), touched AS (
    UPDATE capacity_node AS n
    SET last_poll_at = %(polled_at)s,
        last_successful_poll_at = coalesce(m.success_at, n.last_successful_poll_at),
        journal_epoch = m.to_epoch,
        gpu_utilization_pct = coalesce(m.gpu_utilization_pct, n.gpu_utilization_pct),
        updated_at = %(polled_at)s
    FROM moved AS m
    WHERE n.id = m.node_id
)
SELECT m.node_id, coalesce(i.count, 0), coalesce(q.count, 0)
FROM moved AS m
LEFT JOIN (SELECT node_id, count(*) FROM inserted GROUP BY node_id) AS i
    ON i.node_id = m.node_id
LEFT JOIN (SELECT node_id, count(*) FROM quarantined GROUP BY node_id) AS q
    ON q.node_id = m.node_id
"""


def _integers_literal(values: Iterable[int | None]) -> str:
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


def _texts_literal(values: Iterable[str | None]) -> str:
    # Inside a double-quoted array element only a backslash and a double quote are special.
    return (
        "{"
        + ",".join(
            "NULL" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for value in values
        )
        + "}"
    )


def _moments_literal(values: Iterable[datetime | date | None]) -> str:
    return "{" + ",".join("NULL" if value is None else value.isoformat() for value in values) + "}"


# The statement's array parameters and how each is written: pages (one element per
# node), records (r_), quarantine (q_), availability masks (a_). They travel as
# PostgreSQL array literals in untyped text, which the statement casts: psycopg's list
# adaptation costs ~4x more CPU (a Python loop and a regular expression per element).
_ARRAY_PARAMS: dict[str, Callable[[list[Any]], str]] = {
    "node_id": _integers_literal,
    "from_seq": _integers_literal,
    "to_seq": _integers_literal,
    "gpu_utilization_pct": _integers_literal,
    "r_node_id": _integers_literal,
    "seq": _integers_literal,
    "gpu_id": _integers_literal,
    "busy_ms": _integers_literal,
    "energy_mj": _integers_literal,
    "input_tokens": _integers_literal,
    "output_tokens": _integers_literal,
    "requests": _integers_literal,
    "q_node_id": _integers_literal,
    "q_seq": _integers_literal,
    "a_node_id": _integers_literal,
    "a_gpu_id": _integers_literal,
    "success_at": _moments_literal,
    "window_start": _moments_literal,
    "window_end": _moments_literal,
    "q_window_start": _moments_literal,
    "q_window_end": _moments_literal,
    "a_day": _moments_literal,
    "from_epoch": _texts_literal,
    "to_epoch": _texts_literal,
    "to_hash": _texts_literal,
    "window_ends": _texts_literal,
    "problem": _texts_literal,
    "record_hash": _texts_literal,
    "workload_kind": _texts_literal,
    "workload_ref": _texts_literal,
    "q_epoch": _texts_literal,
    "q_reason": _texts_literal,
    "q_detail": _texts_literal,
    "q_gpu_uuid": _texts_literal,
    "q_payload": _texts_literal,
    "a_minutes": _texts_literal,
    "x_node_id": _integers_literal,
    "x_seq": _integers_literal,
    "x_rid": _texts_literal,
    "x_line": _integers_literal,
    "x_key": _integers_literal,
    "x_product": _texts_literal,
    "x_max_input": _integers_literal,
    "x_max_output": _integers_literal,
    "x_iat": _integers_literal,
}


@dataclass(frozen=True)
class StoredPage:
    """What a page's statement did: ``moved`` False means another poll got there first."""

    moved: bool
    inserted: int
    quarantined: int


@dataclass(frozen=True)
class PageOfNode:
    """One node's page with what its poll found, ready for ``store_pages``."""

    node_id: int
    page: PageToStore
    # Why the node's answers did not verify ('' = they did); stored as its last error.
    problem: str = ""
    gpu_utilization_pct: int | None = None


def _group_params(
    pages: Sequence[PageOfNode], *, polled_at: datetime, next_poll_at: datetime
) -> dict[str, object]:
    params: dict[str, list[object]] = {name: [] for name in _ARRAY_PARAMS}
    for item in pages:
        node_id, page = item.node_id, item.page
        params["node_id"].append(node_id)
        params["from_epoch"].append(page.from_epoch)
        params["from_seq"].append(page.from_seq)
        params["to_epoch"].append(page.to_epoch)
        params["to_seq"].append(page.to_seq)
        params["to_hash"].append(page.to_hash)
        params["window_ends"].append(json.dumps(page.gpu_window_ends))
        # An agent whose answers do not verify was reached but not successfully polled.
        params["success_at"].append(None if item.problem else polled_at)
        params["problem"].append(item.problem)
        params["gpu_utilization_pct"].append(item.gpu_utilization_pct)
        accepted = page.accepted
        params["r_node_id"] += [node_id] * len(accepted)
        params["seq"] += [r.seq for r in accepted]
        params["record_hash"] += [r.record_hash for r in accepted]
        params["gpu_id"] += [r.gpu_device_id for r in accepted]
        params["window_start"] += [r.window_start for r in accepted]
        params["window_end"] += [r.window_end for r in accepted]
        params["workload_kind"] += [r.workload_kind for r in accepted]
        params["workload_ref"] += [r.workload_ref for r in accepted]
        params["busy_ms"] += [r.busy_ms for r in accepted]
        params["energy_mj"] += [r.energy_mj for r in accepted]
        params["input_tokens"] += [r.input_tokens for r in accepted]
        params["output_tokens"] += [r.output_tokens for r in accepted]
        params["requests"] += [r.requests for r in accepted]
        for record in accepted:
            receipt = record.receipt
            if receipt is None:
                continue
            params["x_node_id"].append(node_id)
            params["x_seq"].append(record.seq)
            params["x_rid"].append(receipt.rid)
            params["x_line"].append(receipt.line)
            params["x_key"].append(receipt.key)
            params["x_product"].append(receipt.product)
            params["x_max_input"].append(receipt.max_input_tokens)
            params["x_max_output"].append(receipt.max_output_tokens)
            params["x_iat"].append(receipt.iat)
        quarantined = page.quarantined
        params["q_node_id"] += [node_id] * len(quarantined)
        params["q_epoch"] += [q.journal_epoch for q in quarantined]
        params["q_seq"] += [q.seq for q in quarantined]
        params["q_reason"] += [q.rejection.reason for q in quarantined]
        params["q_detail"] += [q.rejection.detail for q in quarantined]
        params["q_gpu_uuid"] += [q.rejection.gpu_uuid for q in quarantined]
        params["q_window_start"] += [q.rejection.window_start for q in quarantined]
        params["q_window_end"] += [q.rejection.window_end for q in quarantined]
        params["q_payload"] += [json.dumps(q.payload) for q in quarantined]
        masks = page.minute_masks
        params["a_node_id"] += [node_id] * len(masks)
        params["a_gpu_id"] += [m.gpu_device_id for m in masks]
        params["a_day"] += [m.day for m in masks]
        params["a_minutes"] += [m.bits for m in masks]
    literals: dict[str, object] = {
        name: write(params[name]) for name, write in _ARRAY_PARAMS.items()
    }
    return {**literals, "polled_at": polled_at, "next_poll_at": next_poll_at}


def _raw_cursor() -> psycopg.Cursor:
    """A server-side-binding cursor on Django's own connection (same transaction state).

    Django's default cursors bind client-side, quoting every parameter into the query
    text; this one sends the (large) array literals as they are.
    """
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _store_group(
    pages: Sequence[PageOfNode], *, polled_at: datetime, next_poll_at: datetime
) -> dict[int, StoredPage]:
    params = _group_params(pages, polled_at=polled_at, next_poll_at=next_poll_at)
    with connection.wrap_database_errors, _raw_cursor() as cursor:
        cursor.execute(_STORE_PAGES_SQL, params)
        rows = cursor.fetchall()
    moved = {
        node_id: StoredPage(True, inserted, quarantined) for node_id, inserted, quarantined in rows
    }
    return {item.node_id: moved.get(item.node_id, StoredPage(False, 0, 0)) for item in pages}


def _store_alone(
    pages: Sequence[PageOfNode], *, polled_at: datetime, next_poll_at: datetime
) -> dict[int, StoredPage]:
    """``_store_group`` as its own transaction: in autocommit the statement is one (one
    round trip, deferred constraints checked at its implicit commit); inside an open
    transaction (tests) it gets a savepoint."""
    if connection.get_autocommit():
        return _store_group(pages, polled_at=polled_at, next_poll_at=next_poll_at)
    with transaction.atomic():
        return _store_group(pages, polled_at=polled_at, next_poll_at=next_poll_at)


def store_pages(
    pages: Sequence[PageOfNode], *, polled_at: datetime, next_poll_at: datetime
) -> dict[int, StoredPage]:
    """Store one page of each of several nodes (see the module docstring); idempotent.

    Returns what happened to each node's page. The statement runs in its own
    transaction (a savepoint inside an open one), so a group that fails is rolled back
    whole and stored again page by page; the first failing page's error is then raised
    (the batch fails as it always did) after every other node's page was stored.
    """
    node_ids = [item.node_id for item in pages]
    if len(set(node_ids)) != len(node_ids):
        raise ValueError("store_pages takes at most one page per node")
    if not pages:
        return {}
    _quarantine_replayed_receipts(pages)
    try:
        return _store_alone(pages, polled_at=polled_at, next_poll_at=next_poll_at)
    except (IntegrityError, DataError):
        if len(pages) == 1:
            raise
    results: dict[int, StoredPage] = {}
    failure: DatabaseError | None = None
    for item in pages:
        try:
            stored = _store_alone([item], polled_at=polled_at, next_poll_at=next_poll_at)
        except (IntegrityError, DataError) as error:
            failure = failure or error
        else:
            results.update(stored)
    if failure is not None:
        raise failure
    return results


def _quarantine_replayed_receipts(pages: Sequence[PageOfNode]) -> None:
    """Move receipt records whose ``rid`` an earlier poll already stored from accepted to
    quarantined (``receipt_replayed``), in place. One query per group, only when the
    group has receipt records.

    A node's pages are stored one after the other, each only if the cursor is still
    where it was fetched from, and a ``rid`` belongs to one node (its receipt names it),
    so nothing can store the same ``rid`` between this read and the page's statement.
    Should it happen anyway, the statement's ``WHERE usage_record_id IS NULL`` leaves
    the stored request and the billed tokens as they were: a replay is never billed.
    """
    rids = [
        record.receipt.rid
        for item in pages
        for record in item.page.accepted
        if record.receipt is not None
    ]
    if not rids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT replace(request_id::text, '-', '') FROM {InferenceRequest._meta.db_table}"  # noqa: S608
            " WHERE request_id = ANY(%s::uuid[]) AND usage_record_id IS NOT NULL",
            [rids],
        )
        stored = {rid for (rid,) in cursor.fetchall()}
    if not stored:
        return
    for item in pages:
        page = item.page
        kept = []
        for record in page.accepted:
            if record.receipt is None or record.receipt.rid not in stored:
                kept.append(record)
                continue
            raw = dict(record.raw or {})
            rejection = Rejection(
                QuarantineReason.RECEIPT_REPLAYED,
                f"receipt {record.receipt.rid} was metered before",
                str(raw.get("gpu_uuid", ""))[:64],
                record.window_start,
                record.window_end,
            )
            page.quarantined.append(QuarantinedEntry(page.to_epoch, record.seq, rejection, raw))
        page.accepted = kept


def store_page(
    *,
    node_id: int,
    page: PageToStore,
    polled_at: datetime,
    next_poll_at: datetime,
    problem: str = "",
    gpu_utilization_pct: int | None = None,
) -> StoredPage:
    """Store one node's page atomically (``store_pages`` with a group of one)."""
    item = PageOfNode(node_id, page, problem, gpu_utilization_pct)
    return store_pages([item], polled_at=polled_at, next_poll_at=next_poll_at)[node_id]


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
