"""Holding and releasing GPUs: the only writes of ``Allocation`` rows.

Double booking is impossible by the allocation exclusion constraint; this module only
makes conflicts rare and recovers from them:

- free devices are picked with ``FOR NO KEY UPDATE SKIP LOCKED``, so concurrent checkouts
  of one offer take different GPUs instead of queueing on the same rows (``NO KEY`` so
  metering's inserts referencing the devices are not blocked);
- the insert is ``ON CONFLICT DO NOTHING`` with the exclusion constraint as arbiter: a GPU
  allocated by a transaction that committed after our snapshot is simply not inserted
  (no savepoint, no lost work), and the next attempt picks other free GPUs of the same
  offer for the missing ones, a bounded number of times; then the buyer gets a clear
  message.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from capacity.models import Offer
from contracts import selectors
from contracts.models import Allocation, ContractLine

logger = logging.getLogger(__name__)

# Attempts to allocate after an exclusion conflict before giving up.
MAX_ALLOCATION_ATTEMPTS = 5


class CapacityUnavailable(ValidationError):
    """Not enough free GPUs of the offer over the window (now, or after the retries)."""


def pick_free_devices(*, offer: Offer, gpu_count: int, start: datetime, end: datetime) -> list[int]:
    """Lock and return ``gpu_count`` free device ids of ``offer`` over ``[start, end)``.

    ``SKIP LOCKED``: devices another checkout is taking right now are passed over. Raises
    ``CapacityUnavailable`` when there are not enough: the cheap, early refusal of the
    losers of a race, before anything is written.
    """
    devices = selectors.lock_free_device_ids(offer=offer, start=start, end=end, limit=gpu_count)
    if len(devices) < gpu_count:
        free_now = len(devices)
        raise CapacityUnavailable(
            f"Only {free_now} GPU{'s' if free_now != 1 else ''} of this offer "
            f"{'is' if free_now == 1 else 'are'} free from {start:%Y-%m-%d %H:%M} to "
            f"{end:%Y-%m-%d %H:%M} UTC; you asked for {gpu_count}. Try fewer GPUs, "
            "another start date or another offer.",
            code="capacity_unavailable",
        )
    return devices


_INSERT_ALLOCATIONS_SQL = """
INSERT INTO {allocations} (line_id, gpu_device_id, period, created_at)
SELECT %s, device_id, tstzrange(%s, %s, '[)'), %s FROM unnest(%s::bigint[]) AS device_id
ON CONFLICT DO NOTHING
RETURNING id, gpu_device_id
"""


def allocate_gpus(
    *,
    line: ContractLine,
    offer: Offer,
    gpu_count: int,
    start: datetime,
    end: datetime,
    devices: list[int] | None = None,
) -> list[Allocation]:
    """Hold ``gpu_count`` free GPUs of ``offer`` for ``line`` over ``[start, end)``.

    ``devices``: ids already picked (``pick_free_devices``) in this transaction. Must run
    inside a transaction. One ``INSERT ... ON CONFLICT DO NOTHING`` per attempt: the
    exclusion constraint is the arbiter, so a GPU committed by someone else after our
    snapshot is skipped rather than aborting the statement, and only the missing GPUs are
    picked again.
    """
    if devices is None:
        devices = pick_free_devices(offer=offer, gpu_count=gpu_count, start=start, end=end)
    return _hold(line=line, offer=offer, gpu_count=gpu_count, start=start, end=end, devices=devices)


_INSERT_LINE_AND_ALLOCATIONS_SQL = """
WITH line AS (
  INSERT INTO {lines} (contract_id, kind, offer_id, gpu_count, term_months,
                       price_per_gpu_hour, starts_at, ends_at, created_at)
  VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
  RETURNING id
), held AS (
  INSERT INTO {allocations} (line_id, gpu_device_id, period, created_at)
  SELECT line.id, device_id, tstzrange(%s, %s, '[)'), %s
  FROM line, unnest(%s::bigint[]) AS device_id
  ON CONFLICT DO NOTHING
  RETURNING id, gpu_device_id
)
SELECT line.id, held.id, held.gpu_device_id FROM line LEFT JOIN held ON true
"""


def add_line_with_allocations(
    *, line: ContractLine, offer: Offer, devices: list[int]
) -> list[Allocation]:
    """Insert the unsaved reserved ``line`` and its allocations on the picked ``devices``
    in one statement (checkout's hot path: one round trip instead of two), then hold
    other free GPUs for any the exclusion constraint skipped, as ``allocate_gpus`` does.
    Sets ``line.pk``."""
    assert line.pk is None and line.starts_at is not None and line.ends_at is not None
    sql = _INSERT_LINE_AND_ALLOCATIONS_SQL.format(
        lines=ContractLine._meta.db_table, allocations=Allocation._meta.db_table
    )
    start, end = line.starts_at, line.ends_at
    line.created_at = line.created_at or timezone.now()
    params = (
        *(line.contract_id, line.kind, line.offer_id, line.gpu_count, line.term_months),
        *(line.price_per_gpu_hour, start, end, line.created_at),
        *(start, end, line.created_at, devices),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    line.pk = rows[0][0]
    line._state.adding = False
    held = [
        _allocation(line=line, pk=pk, device_id=device_id, created_at=line.created_at)
        for _, pk, device_id in rows
        if pk is not None
    ]
    if len(held) == line.gpu_count:
        return held
    logger.info("allocation conflict on line %s, attempt 1", line.pk)
    return _hold(
        line=line,
        offer=offer,
        gpu_count=line.gpu_count,
        start=start,
        end=end,
        devices=None,
        held=held,
        attempts_made=1,
    )


_INSERT_ALLOCATIONS_SQL = """
INSERT INTO {allocations} (line_id, gpu_device_id, period, created_at)
SELECT %s, device_id, tstzrange(%s, %s, '[)'), %s FROM unnest(%s::bigint[]) AS device_id
ON CONFLICT DO NOTHING
RETURNING id, gpu_device_id
"""


def _allocation(*, line: ContractLine, pk: int, device_id: int, created_at: datetime) -> Allocation:
    assert line.starts_at is not None and line.ends_at is not None
    allocation = Allocation(
        pk=pk,
        line=line,
        gpu_device_id=device_id,
        period=selectors.window(line.starts_at, line.ends_at),
        created_at=created_at,
    )
    allocation._state.adding = False
    return allocation


def _hold(
    *,
    line: ContractLine,
    offer: Offer,
    gpu_count: int,
    start: datetime,
    end: datetime,
    devices: list[int] | None,
    held: list[Allocation] | None = None,
    attempts_made: int = 0,
) -> list[Allocation]:
    """Insert allocations until ``gpu_count`` are held; after a conflict, pick only the
    missing GPUs again (our own inserts are visible to the pick), a bounded number of
    times, then refuse clearly."""
    sql = _INSERT_ALLOCATIONS_SQL.format(allocations=Allocation._meta.db_table)
    created_at = timezone.now()
    held = list(held or [])
    period = selectors.window(start, end)
    for attempt in range(attempts_made + 1, MAX_ALLOCATION_ATTEMPTS + 1):
        missing = gpu_count - len(held)
        if devices is None:
            devices = selectors.lock_free_device_ids(
                offer=offer, start=start, end=end, limit=missing
            )
            if len(devices) < missing:
                break
        with connection.cursor() as cursor:
            cursor.execute(sql, (line.pk, start, end, created_at, devices[:missing]))
            rows = cursor.fetchall()
        for pk, device_id in rows:
            allocation = Allocation(
                pk=pk, line=line, gpu_device_id=device_id, period=period, created_at=created_at
            )
            allocation._state.adding = False
            held.append(allocation)
        if len(held) == gpu_count:
            return held
        # Another checkout committed some of these GPUs after our snapshot: the exclusion
        # constraint skipped them. Pick others for the rest.
        logger.info("allocation conflict on line %s, attempt %s", line.pk, attempt)
        devices = None
    raise CapacityUnavailable(
        "These GPUs were just reserved by someone else and no others are free for this "
        "window. Try another offer or start date.",
        code="capacity_unavailable",
    )


def release_from(*, allocations: list[Allocation], moment: datetime) -> int:
    """End ``allocations`` at ``moment``: periods that start later are deleted, the others
    (an instance's open-ended ones too) truncated to ``[lower, moment)``. Returns how
    many GPUs were released."""
    released = 0
    for allocation in allocations:
        lower, upper = allocation.period.lower, allocation.period.upper
        if upper is not None and upper <= moment:
            continue
        if lower >= moment:
            allocation.delete()
        else:
            allocation.period = selectors.window(lower, moment)
            allocation.save(update_fields=["period"])
        released += 1
    return released
