"""Polling batches against hostile agents (issue 13): an agent URL aimed at the platform's
own network, a batch stopped by its Celery time limit, and the limits themselves.

The adapter's own bounds (deadline, size caps, address rules) are tested with real
sockets in tests/capacity/test_agent_client.py.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from datetime import UTC, datetime

import pytest

from capacity.agent_client import MESSAGE_NOT_PUBLIC
from capacity.metering import batch, tasks
from capacity.metering.models import NodePollState
from capacity.metering.polling import poll_concurrently
from tests.capacity.metering.conftest import bare_target

NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_an_internal_agent_url_is_not_polled_and_last_error_names_nothing_internal(node, settings):
    """Issue 13 (SSRF): the poller fetched internal URLs with the node's bearer token, and
    ``last_error`` told the partner which internal ports answered."""
    settings.AGENT_ALLOW_PRIVATE_URLS = False
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    node.agent_url = f"http://127.0.0.1:{port}/internal/admin/config?x=#"
    node.save(update_fields=["agent_url"])
    try:
        result = batch.poll_and_store(
            [node.pk], now=NOW, interval_seconds=60, always_check_health=True
        )
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected
    finally:
        listener.close()

    assert (result.polled, result.failed, result.inserted) == (1, 1, 0)
    assert NodePollState.objects.get(node=node).last_error == MESSAGE_NOT_PUBLIC


def test_a_stopped_batch_cancels_its_polls_instead_of_waiting_for_them():
    """Celery's soft time limit raises in the task's thread (a signal); the batch must then
    end at once, not after every agent still trickling bytes has been waited for."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept_and_stall() -> None:  # accepts, never answers: polls wait for their deadline
        for _ in range(2):
            connection, _ = listener.accept()
            accepted.append(connection)

    threading.Thread(target=accept_and_stall, daemon=True).start()
    targets = [bare_target(f"http://127.0.0.1:{port}", node_id=index) for index in (1, 2)]

    class TimeLimit(Exception):
        pass

    def soft_limit(signum, frame):  # type: ignore[no-untyped-def]
        raise TimeLimit

    previous = signal.signal(signal.SIGALRM, soft_limit)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(TimeLimit):
            for _ in poll_concurrently(targets, polled_at=NOW):
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        listener.close()
        for connection in accepted:
            connection.close()
    elapsed = time.monotonic() - started

    # Without cancelling, this waits for the 5 s read timeouts of both polls.
    assert elapsed < 2.5
    assert not any(thread.name == "metering-poll" for thread in threading.enumerate())


def test_poll_batches_have_celery_time_limits(settings):
    assert settings.METERING_BATCH_SOFT_TIME_LIMIT_SECONDS == 300
    assert (tasks.poll_batch.soft_time_limit, tasks.poll_batch.time_limit) == (300, 360)
