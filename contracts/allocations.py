"""Holding and releasing GPUs: the only writes of ``Allocation`` rows.

Double booking is impossible by the allocation exclusion constraint; this module only
makes conflicts rare and recovers from them:

- free devices are picked with ``FOR NO KEY UPDATE SKIP LOCKED``, so concurrent checkouts
  of one offer take different GPUs instead of queueing on the same rows (``NO KEY`` so
  metering's inserts referencing the devices are not blocked);
- if an insert still conflicts (a GPU allocated by a transaction that committed after our
  snapshot), the savepoint rolls back and the next attempt picks other free GPUs of the
  same offer, a bounded number of times; then the buyer gets a clear message.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

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
    inside a transaction. Retries with other free GPUs after a conflict.
    """
    period = selectors.window(start, end)
    for attempt in range(1, MAX_ALLOCATION_ATTEMPTS + 1):
        if devices is None:
            devices = pick_free_devices(offer=offer, gpu_count=gpu_count, start=start, end=end)
        try:
            with transaction.atomic():
                return Allocation.objects.bulk_create(
                    [Allocation(line=line, gpu_device_id=pk, period=period) for pk in devices]
                )
        except IntegrityError:
            # Another checkout committed one of these GPUs after our snapshot: the
            # exclusion constraint refused the insert. Pick again.
            logger.info("allocation conflict on line %s, attempt %s", line.pk, attempt)
            devices = None
    raise CapacityUnavailable(
        "These GPUs were just reserved by someone else and no others are free for this "
        "window. Try another offer or start date.",
        code="capacity_unavailable",
    )


def release_from(*, allocations: list[Allocation], moment: datetime) -> int:
    """End ``allocations`` at ``moment``: periods that start later are deleted, the others
    truncated to ``[lower, moment)``. Returns how many GPUs were released."""
    released = 0
    for allocation in allocations:
        lower, upper = allocation.period.lower, allocation.period.upper
        if upper <= moment:
            continue
        if lower >= moment:
            allocation.delete()
        else:
            allocation.period = selectors.window(lower, moment)
            allocation.save(update_fields=["period"])
        released += 1
    return released
