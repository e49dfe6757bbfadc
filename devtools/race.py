"""Concurrent checkouts on real PostgreSQL: the bench command's and the tests' race.

Each buyer runs in its own thread with its own database connection (so the server needs
``max_connections`` above the number of buyers). With ``processes`` > 1 the threads are
spread over that many forked worker processes, like several web workers of one
deployment, instead of 100 threads behind one GIL. Every thread connects first, then all
wait on one cross-process barrier; latency is measured from the instant the barrier
releases (one shared clock reading, so a thread that is scheduled late is not excused) to
the checkout's commit or refusal. ``overlaps`` counts pairs of allocations of one GPU
whose periods overlap: the exclusion constraint makes it 0 whatever happens.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import OperationalError, connection, connections

from accounts.models import Organization
from capacity.models import Offer
from contracts.checkout import reservation_checkout, reservation_quote
from contracts.models import Allocation
from contracts.selectors import buyer_has_payment_method

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


# (outcome, latency_ms, error): outcome is "ok", "refused" or "error".
_Outcome = tuple[str, float, str]


def _run_buyers(
    *,
    buyers: list[Organization],
    offer: Offer,
    gpus_each: int,
    starts_at: datetime,
    term_months: int,
    start_line: Any,
    released_at: Any,
) -> list[_Outcome]:
    """One thread per buyer in this process; returns their outcomes once all are done.

    The last of this process's threads to be ready waits on ``start_line`` (one party per
    process) for the other processes, then the process's own barrier releases its
    threads: a cheap in-process wake-up instead of one cross-process handshake per thread.
    """
    outcomes: list[_Outcome] = []
    lock = threading.Lock()
    quote_args = {"gpu_count": gpus_each, "starts_at": starts_at, "term_months": term_months}
    barrier = threading.Barrier(len(buyers), action=start_line.wait, timeout=BARRIER_TIMEOUT_S)

    def run(buyer: Organization) -> None:
        try:
            try:
                connection.ensure_connection()  # connect (and set up) before the start line
                _review_before_confirming(buyer=buyer, offer=offer, **quote_args)
            except OperationalError:
                barrier.abort()  # e.g. max_connections reached: nobody waits forever
                start_line.abort()
                raise
            barrier.wait()
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
            elapsed_ms = (time.perf_counter() - released_at.value) * 1000
            with lock:
                outcomes.append((outcome, elapsed_ms, ""))
        except Exception as error:  # a crashed thread is reported, never silently lost
            with lock:
                outcomes.append(("error", 0.0, repr(error)))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(buyer,)) for buyer in buyers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _review_before_confirming(*, buyer: Organization, offer: Offer, **quote_args: Any) -> None:
    """What the buyer's checkout page does on this connection before "Confirm": the quote
    and the payment-method check (read-only). Besides being the real sequence, it gives
    the connection the server-side catalog caches a web worker's long-lived connection
    has, so the race measures checkouts and not the first use of 100 fresh backends."""
    reservation_quote(offer=offer, **quote_args)
    buyer_has_payment_method(buyer)


def _worker(queue: Any, **kwargs: Any) -> None:
    """Body of a forked worker process: race its share of buyers, send back outcomes."""
    try:
        queue.put(_run_buyers(**kwargs))
    except BaseException as error:  # the parent must always get an answer
        queue.put([("error", 0.0, repr(error))])
        raise


def race_checkouts(
    *,
    buyers: list[Organization],
    offer: Offer,
    gpus_each: int,
    starts_at: datetime,
    term_months: int = 1,
    processes: int = 1,
) -> RaceResult:
    """Every buyer checks out ``gpus_each`` GPUs of ``offer`` at the same instant.

    ``processes``: worker processes (forked; buyers dealt round-robin) sharing the race;
    1 runs every thread in this process.
    """
    context = multiprocessing.get_context("fork")
    # perf_counter is CLOCK_MONOTONIC: one clock for every process of the machine.
    released_at = context.Value("d", 0.0, lock=False)

    def mark_release() -> None:  # runs once, in the last thread to arrive, before release
        released_at.value = time.perf_counter()

    start_line = context.Barrier(processes, action=mark_release, timeout=BARRIER_TIMEOUT_S)
    common = {
        "offer": offer,
        "gpus_each": gpus_each,
        "starts_at": starts_at,
        "term_months": term_months,
        "start_line": start_line,
        "released_at": released_at,
    }
    outcomes: list[_Outcome] = []
    if processes <= 1:
        outcomes = _run_buyers(buyers=buyers, **common)
    else:
        connections.close_all()  # a forked child must not share the parent's socket
        queue = context.Queue()
        workers = [
            context.Process(
                target=_worker, args=(queue,), kwargs={"buyers": buyers[n::processes], **common}
            )
            for n in range(processes)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            outcomes += queue.get()
        for worker in workers:
            worker.join()
    result = RaceResult()
    for outcome, elapsed_ms, error in outcomes:
        if outcome == "error":
            result.errors.append(error)
            continue
        result.latencies_ms.append(elapsed_ms)
        if outcome == "ok":
            result.succeeded += 1
        else:
            result.refused += 1
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
