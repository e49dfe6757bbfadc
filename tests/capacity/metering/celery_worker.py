"""A real metering Celery worker for the fault tests: ``celery -A config worker`` against
Redis (``METERING_TEST_BROKER_URL``) and this test's database (``config.test_settings``
reads ``HASHGRID_DB_NAME_OVERRIDE``), and the sender that enqueues its batches."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from celery import Celery
from django.conf import settings
from django.utils import timezone

from capacity.metering import sweep
from capacity.metering.models import NodePollState

BROKER_URL = os.environ.get("METERING_TEST_BROKER_URL", "redis://127.0.0.1:6379/5")


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


def start_worker(log_path: Path) -> subprocess.Popen[bytes]:
    """One worker, one prefork pool process; its output appended to ``log_path``."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "HASHGRID_DB_NAME_OVERRIDE": settings.DATABASES["default"]["NAME"],
        "CELERY_BROKER_URL": BROKER_URL,
        "LOG_LEVEL": "WARNING",
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
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


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def worker(broker, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(tmp_path / "worker.log")
    try:
        yield process
    finally:
        stop_worker(process)


def worker_child(worker: subprocess.Popen[bytes]) -> psutil.Process:
    """The worker's pool process (where batches run), once it is there."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = psutil.Process(worker.pid).children()
        if children:
            return children[0]
        time.sleep(0.1)
    raise AssertionError("no worker pool process")


def enqueue_to(broker: Celery) -> Callable[[list[int]], None]:
    """``sweep``'s ``enqueue``: send each batch to the worker's queue."""

    def send(node_ids: list[int]) -> None:
        with broker.connection_for_write(BROKER_URL) as conn:
            broker.send_task("capacity.metering.tasks.poll_batch", args=[node_ids], connection=conn)

    return send


def sweep_all(broker: Celery, *, batch_size: int) -> None:
    """Make every node due (the clock moves on) and sweep, batches to the worker."""
    now = timezone.now()
    NodePollState.objects.update(next_poll_at=now)
    sweep.sweep(now=now, interval_seconds=60, enqueue=enqueue_to(broker), batch_size=batch_size)


def wait_polled(since: datetime, *, timeout_s: float = 40.0) -> None:
    """Until every node was polled at or after ``since``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not NodePollState.objects.exclude(last_poll_at__gte=since).exists():
            return
        time.sleep(0.2)
    raise AssertionError("the worker did not poll every node in time")
