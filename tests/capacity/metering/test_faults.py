"""Faults, end to end: a real Celery worker, the real fleet simulator, a bad day.

Agent restarts (the fleet process itself and the ``restart`` fault), duplicate pages,
timeouts, 5xx answers, a worker child killed with SIGKILL in the middle of a batch and
the worker's database connections terminated mid-batch — then what is stored must equal
the simulator's ``/_sim/truth`` exactly: nothing lost, nothing counted twice.

The worker and its broker: ``celery_worker.py``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from django.db import connection
from django.utils import timezone

from capacity.metering.models import NodePollState, QuarantinedRecord
from capacity.metering.selectors import rollup_totals, usage_totals
from devtools.simulated_fleet import FleetProcess, fetch_truth, register_fleet_nodes
from tests.capacity.metering.celery_worker import sweep_all, wait_polled, worker_child
from tests.factories import OrganizationFactory

FLEET_PORT = int(os.environ.get("METERING_TEST_FLEET_PORT", "9521"))
NODES = 12
BATCH_SIZE = 4
SEED = 41

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    process = FleetProcess(
        nodes=NODES,
        port=FLEET_PORT,
        seed=SEED,
        gpus_per_node=2,
        window_seconds=60,
        backfill_windows=40,
        state_dir=tmp_path / "fleet",
    )
    with process:
        yield process


def _stored_equals_truth(fleet: FleetProcess, node_ids: list[int]) -> bool:
    truth = fetch_truth(fleet, range(NODES))
    cursors = dict(NodePollState.objects.values_list("node_id", "last_seq"))
    if [cursors[node_id] for node_id in node_ids] != [truth.head_seqs[i] for i in range(NODES)]:
        return False
    assert usage_totals() == truth.totals
    return True


def _converge(broker: Celery, fleet: FleetProcess, node_ids: list[int], rounds: int = 6) -> None:
    """Sweep until stored usage equals the simulator's truth.

    Each round waits for the cursors, not for every node to be polled after the sweep
    started: after a kill the worker may first run the redelivered batch, which polls
    some nodes while the sweep makes them due, so they are not in the sweep's batches."""
    for _ in range(rounds):
        sweep_all(broker, batch_size=BATCH_SIZE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if _stored_equals_truth(fleet, node_ids):
                return
            time.sleep(0.3)
    raise AssertionError("stored usage never reached the simulator's truth")


def test_stored_usage_equals_truth_through_every_fault(broker, fleet, worker):
    partner = OrganizationFactory(is_buyer=False, is_partner=True)
    node_ids = register_fleet_nodes(organization=partner, fleet=fleet)
    worker_child(worker)

    # Round 1: restarts, duplicate pages, a timeout and 5xx answers.
    fleet.inject("restart", [3])
    fleet.inject("duplicate_page", [2, 5], count=2)
    fleet.inject("http_5xx", [1, 6], count=2, status=502)
    fleet.inject("timeout", [0], delay_ms=6000)  # beyond the 5 s read timeout
    started = timezone.now()
    sweep_all(broker, batch_size=BATCH_SIZE)
    wait_polled(started)
    assert NodePollState.objects.get(node_id=node_ids[0]).last_error.startswith("timed out")
    assert NodePollState.objects.get(node_id=node_ids[1]).last_error == "HTTP 502"
    _converge(broker, fleet, node_ids)

    # Round 2: the fleet process restarts (same journals, new boot) with usage pending.
    fleet.stop()
    fleet.start()
    fleet.inject("restart", list(range(NODES)))
    _converge(broker, fleet, node_ids)

    # Round 3: SIGKILL the worker's pool process while a batch waits on a slow agent.
    fleet.inject("timeout", [0], delay_ms=2500)
    child = worker_child(worker)
    sweep_all(broker, batch_size=BATCH_SIZE)
    time.sleep(1.0)
    child.send_signal(signal.SIGKILL)
    _converge(broker, fleet, node_ids)

    # Round 4: the database drops the worker's connections in the middle of a batch.
    fleet.inject("timeout", [4], delay_ms=2500)
    sweep_all(broker, batch_size=BATCH_SIZE)
    # As soon as the worker holds a connection (its batch then waits on the slow agent
    # for 2.5 s), terminate it; a fixed sleep misses it on a busy machine.
    deadline = time.monotonic() + 10
    terminated = 0
    while not terminated and time.monotonic() < deadline:
        time.sleep(0.1)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            (terminated,) = cursor.fetchone()
    assert terminated >= 1
    _converge(broker, fleet, node_ids)

    assert rollup_totals() == usage_totals()
    assert not QuarantinedRecord.objects.exists()
