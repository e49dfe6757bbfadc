"""Moves this Python process's clock for a test run under ``HASHGRID_TEST_NOW``.

``tests/conftest.py`` turns ``HASHGRID_TEST_NOW`` into ``HASHGRID_TEST_CLOCK_OFFSET_NS``
(target minus the real clock, read once) and puts this folder first on ``PYTHONPATH``,
so Python imports this module at start-up in the test process and in every Python
process a test starts (the fleet simulator, Celery workers, localstripe, ``manage.py``).
All of them then share one moved clock that ticks with the real one; ``time.monotonic``
is left alone, so timeouts and sleeps behave as usual.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

OFFSET_VARIABLE = "HASHGRID_TEST_CLOCK_OFFSET_NS"


def _moved_now(offset_ns: int) -> datetime:
    now_ns = time.time_ns() + offset_ns
    seconds, remainder_ns = divmod(now_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC) + timedelta(microseconds=remainder_ns // 1000)


def _start() -> None:
    offset = os.environ.get(OFFSET_VARIABLE)
    if not offset:
        return
    try:
        import time_machine
    except ImportError:  # a Python without the project's dev dependencies
        return
    time_machine.travel(_moved_now(int(offset)), tick=True).start()
    # time-machine starts ticking at the first reading, not at ``start()``: read now, so
    # this process's clock runs from here like every other process's.
    time.time_ns()


_start()
