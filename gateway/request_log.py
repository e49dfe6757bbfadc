"""The gateway's request log: one ``InferenceRequest`` row per routed attempt, in batches.

The request path only appends a tuple to a list; a background task writes the list
every 0.5 s, or as soon as it holds 500 rows, in one ``INSERT … ON CONFLICT
(request_id) DO UPDATE`` of the gateway's columns only (metering may have created the
row from the agent's record first; its columns are left alone). A batch that fails is
kept and retried; a process killed between batches loses at most its last half second,
which the agent's journal still bills (docs/gateway.md "Meter").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from capacity.metering.models import InferenceRequest
from gateway import db

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 0.5
FLUSH_ROWS = 500
# Rows kept while the database is unreachable; beyond that the oldest are dropped (the
# agent's records still bill them).
MAX_PENDING_ROWS = 200_000
GATEWAY_COLUMNS = [
    "gateway_status",
    "gateway_input_tokens",
    "gateway_output_tokens",
    "time_to_first_token_ms",
    "duration_ms",
    "logged_at",
]


@dataclass(frozen=True, slots=True)
class Attempt:
    request_id: str  # the receipt's rid (32 hex)
    node_id: int
    api_key_id: int
    line_id: int
    product_slug: str
    max_input_tokens: int
    max_output_tokens: int
    issued_at: int  # the receipt's iat, Unix seconds
    status: int  # what this attempt ended with (docs/gateway.md "Log")
    input_tokens: int  # relayed to the buyer
    output_tokens: int
    time_to_first_token_ms: int | None
    duration_ms: int


def write_batch(attempts: list[Attempt]) -> None:
    """Upsert the gateway's side of the attempts (the database thread)."""
    logged_at = datetime.now(tz=UTC)
    InferenceRequest.objects.bulk_create(
        [
            InferenceRequest(
                request_id=uuid.UUID(hex=attempt.request_id),
                node_id=attempt.node_id,
                api_key_id=attempt.api_key_id,
                line_id=attempt.line_id,
                product_slug=attempt.product_slug,
                max_input_tokens=attempt.max_input_tokens,
                max_output_tokens=attempt.max_output_tokens,
                issued_at=datetime.fromtimestamp(attempt.issued_at, tz=UTC),
                gateway_status=attempt.status,
                gateway_input_tokens=attempt.input_tokens,
                gateway_output_tokens=attempt.output_tokens,
                time_to_first_token_ms=attempt.time_to_first_token_ms,
                duration_ms=attempt.duration_ms,
                logged_at=logged_at,
            )
            for attempt in attempts
        ],
        update_conflicts=True,
        unique_fields=["request_id"],
        update_fields=GATEWAY_COLUMNS,
    )


class RequestLog:
    def __init__(self) -> None:
        self._pending: list[Attempt] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def append(self, attempt: Attempt) -> None:
        self._pending.append(attempt)
        if len(self._pending) >= FLUSH_ROWS:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-request-log")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL_SECONDS)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:FLUSH_ROWS], self._pending[FLUSH_ROWS:]
            try:
                await db.run(write_batch, batch)
            except Exception:
                logger.exception("gateway request log: batch of %d rows not written", len(batch))
                self._pending[:0] = batch
                del self._pending[:-MAX_PENDING_ROWS]
                await db.run(db.reset_connection)
                return
            self.written += len(batch)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
