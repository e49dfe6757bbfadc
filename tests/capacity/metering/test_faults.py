"""Faults, end to end: a real Celery worker, the real fleet simulator, a bad day.

Agent restarts (the fleet process itself and the ``restart`` fault), duplicate pages,
timeouts, 5xx answers, a worker child killed with SIGKILL in the middle of a batch and
the worker's database connections terminated mid-batch — then what is stored must equal
the simulator's ``/_sim/truth`` exactly: nothing lost, nothing counted twice.

The worker runs ``celery -A config worker`` against Redis DB 5 and this test's database
(``config.test_settings`` reads ``HASHGRID_DB_NAME_OVERRIDE``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from celery import Celery
from django.conf import settings
from django.db import connection
from django.utils import timezone

from capacity.metering import sweep
from capacity.metering.models import NodePollState, QuarantinedRecord
from capacity.metering.selectors import rollup_totals, usage_totals
from devtools.simulated_fleet import FleetProcess, fetch_truth, register_fleet_nodes
from tests.factories import OrganizationFactory

BROKER_URL = os.environ.get("METERING_TEST_BROKER_URL", "redis://127.0.0.1:6379/5")
FLEET_PORT = int(os.environ.get("METERING_TEST_FLEET_PORT", "9521"))
NODES = 12
BATCH_SIZE = 4
SEED = 41

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def broker() -> Iterator[Celery]:
    if not _redis_answers():
        pytest.fail("the fault test needs Redis on 127.0.0.1:6379 (.ci/run starts one)")
    sender = Celery("metering-fault-test", broker=BROKER_URL)
    # Always name the URL: Celery lets a CELERY_BROKER_URL environment variable (CI sets
    # one) override the app's broker, which would send to a queue the worker never reads.
    with sender.connection_for_write(BROKER_URL) as conn:
        conn.default_channel.client.flushdb()
    yield sender
    sender.close()


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


@pytest.fixture
def worker(broker, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "HASHGRID_DB_NAME_OVERRIDE": settings.DATABASES["default"]["NAME"],
        "CELERY_BROKER_URL": BROKER_URL,
        "LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            "--loglevel=INFO",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=settings.BASE_DIR,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _enqueue(broker: Celery):
    def send(node_ids: list[int]) -> None:
        with broker.connection_for_write(BROKER_URL) as conn:
            broker.send_task("capacity.metering.tasks.poll_batch", args=[node_ids], connection=conn)

    return send


def _sweep_all(broker: Celery) -> None:
    """Make every node due (the clock moves on) and sweep."""
    now = timezone.now()
    NodePollState.objects.update(next_poll_at=now)
    sweep.sweep(now=now, interval_seconds=60, enqueue=_enqueue(broker), batch_size=BATCH_SIZE)


def _wait_polled(since, *, timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not NodePollState.objects.exclude(last_poll_at__gte=since).exists():
            return
        time.sleep(0.2)
    raise AssertionError("the worker did not poll every node in time")


def _worker_child(worker: subprocess.Popen[bytes]) -> psutil.Process:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = psutil.Process(worker.pid).children()
        if children:
            return children[0]
        time.sleep(0.1)
    raise AssertionError("no worker pool process")


def _stored_equals_truth(fleet: FleetProcess, node_ids: list[int]) -> bool:
    truth = fetch_truth(fleet, range(NODES))
    cursors = dict(NodePollState.objects.values_list("node_id", "last_seq"))
    if [cursors[node_id] for node_id in node_ids] != [truth.head_seqs[i] for i in range(NODES)]:
        return False
    assert usage_totals() == truth.totals
    return True


def _converge(broker: Celery, fleet: FleetProcess, node_ids: list[int], rounds: int = 6) -> None:
    for _ in range(rounds):
        started = timezone.now()
        _sweep_all(broker)
        _wait_polled(started)
        if _stored_equals_truth(fleet, node_ids):
            return
    raise AssertionError("stored usage never reached the simulator's truth")


def test_stored_usage_equals_truth_through_every_fault(broker, fleet, worker):
    partner = OrganizationFactory(is_buyer=False, is_partner=True)
    node_ids = register_fleet_nodes(organization=partner, fleet=fleet)
    _worker_child(worker)

    # Round 1: restarts, duplicate pages, a timeout and 5xx answers.
    fleet.inject("restart", [3])
    fleet.inject("duplicate_page", [2, 5], count=2)
    fleet.inject("http_5xx", [1, 6], count=2, status=502)
    fleet.inject("timeout", [0], delay_ms=6000)  # beyond the 5 s read timeout
    started = timezone.now()
    _sweep_all(broker)
    _wait_polled(started)
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
    child = _worker_child(worker)
    _sweep_all(broker)
    time.sleep(1.0)
    child.send_signal(signal.SIGKILL)
    _converge(broker, fleet, node_ids)

    # Round 4: the database drops the worker's connections in the middle of a batch.
    fleet.inject("timeout", [4], delay_ms=2500)
    _sweep_all(broker)
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
