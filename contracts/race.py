"""Concurrent checkouts on real PostgreSQL: the bench command's and the tests' race.

Each buyer runs in its own thread with its own database connection (so the server needs
``max_connections`` above the number of buyers); all of them wait on a
barrier and check out at once. ``overlaps`` counts pairs of allocations of one GPU whose
periods overlap: the exclusion constraint makes it 0 whatever happens.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import OperationalError, connection, connections

from capacity.models import Offer
from contracts.checkout import reservation_checkout
from contracts.models import Allocation
from marketplace.models import Organization

# Every thread must be connected and at the start line within this many seconds.
BARRIER_TIMEOUT_S = 60


@dataclass
class RaceResult:
    succeeded: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[index]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else 0.0


def race_checkouts(
    *,
    buyers: list[Organization],
    offer: Offer,
    gpus_each: int,
    starts_at: datetime,
    term_months: int = 1,
) -> RaceResult:
    """Every buyer checks out ``gpus_each`` GPUs of ``offer`` at the same instant."""
    result = RaceResult()
    lock = threading.Lock()
    barrier = threading.Barrier(len(buyers), timeout=BARRIER_TIMEOUT_S)

    def run(buyer: Organization) -> None:
        try:
            try:
                connection.ensure_connection()  # connect before the start line
            except OperationalError:
                barrier.abort()  # e.g. max_connections reached: nobody waits forever
                raise
            barrier.wait()
            started = time.perf_counter()
            outcome = "ok"
            try:
                reservation_checkout(
                    buyer=buyer,
                    offer=offer,
                    gpu_count=gpus_each,
                    starts_at=starts_at,
                    term_months=term_months,
                    actor=None,
                )
            except ValidationError:
                outcome = "refused"
            elapsed_ms = (time.perf_counter() - started) * 1000
            with lock:
                result.latencies_ms.append(elapsed_ms)
                if outcome == "ok":
                    result.succeeded += 1
                else:
                    result.refused += 1
        except Exception as error:  # a crashed thread is reported, never silently lost
            with lock:
                result.errors.append(repr(error))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(buyer,)) for buyer in buyers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def overlapping_allocation_pairs() -> int:
    """Pairs of allocations of one GPU with overlapping periods (must be 0)."""
    table = Allocation._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {table} a JOIN {table} b "  # noqa: S608 - table from metadata
            "ON a.gpu_device_id = b.gpu_device_id AND a.id < b.id AND a.period && b.period"
        )
        return int(cursor.fetchone()[0])
