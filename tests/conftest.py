"""Suite-wide set-up: a real PostgreSQL (DATABASE_URL, else the embedded server), and the
clock moved when ``HASHGRID_TEST_NOW`` asks for it.

``HASHGRID_TEST_NOW=2026-12-31T23:30:00Z make test`` runs the whole suite as if it were
that moment (UTC): this process and every Python process the tests start see a clock
that starts there and ticks (``tests/moved_clock/sitecustomize.py``). PostgreSQL's own
``now()`` is not moved; the application never reads it.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

CLOCK_VARIABLE = "HASHGRID_TEST_NOW"
MOVED_CLOCK_DIR = Path(__file__).resolve().parent / "moved_clock"


def _parse_test_now(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise pytest.UsageError(
            f"{CLOCK_VARIABLE}={raw!r} is not an ISO 8601 moment such as 2026-12-31T23:30:00Z"
        ) from None
    if moment.tzinfo is None:
        raise pytest.UsageError(f"{CLOCK_VARIABLE}={raw!r} needs a time zone (end it with Z)")
    return moment.astimezone(UTC)


def _move_clock() -> None:
    raw = os.environ.get(CLOCK_VARIABLE)
    if not raw:
        return
    moment = _parse_test_now(raw)
    if os.environ.get("HASHGRID_TEST_CLOCK_OFFSET_NS") and os.environ.get("PYTEST_XDIST_WORKER"):
        # An xdist worker: the controller moved the clock and this process started with
        # its offset and PYTHONPATH, so Python already ran the module as ``sitecustomize``
        # (running it again would move the clock twice); the processes its tests start
        # inherit the same offset.
        return
    offset_ns = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    os.environ["HASHGRID_TEST_CLOCK_OFFSET_NS"] = str(offset_ns - time.time_ns())
    paths = [
        str(MOVED_CLOCK_DIR),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    # This process already started: apply the same module here.
    import tests.moved_clock.sitecustomize  # noqa: F401


# What each pytest-xdist worker gets of its own (``make test`` runs two): the worker's
# index picks a column. PostgreSQL databases need nothing here: pytest-django suffixes
# the test database's name with the worker's id, and the processes a test starts are
# given that name. Ports chosen by the kernel need nothing either.
XDIST_RESOURCES = {
    # The tests' simulated fleets and gateways listen from this port up.
    "METERING_TEST_FLEET_PORT": ("9640", "10640"),
    # Redis databases: the Celery broker of worker tests, the gateways' shared store.
    "METERING_TEST_BROKER_URL": ("redis://127.0.0.1:6379/5", "redis://127.0.0.1:6379/14"),
    "GATEWAY_TEST_STORE_URL": ("redis://127.0.0.1:6379/13", "redis://127.0.0.1:6379/15"),
}


def _separate_xdist_worker() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    index = int(worker.removeprefix("gw"))
    if index >= 2:
        raise pytest.UsageError("the suite's resources are laid out for at most 2 xdist workers")
    for variable, values in XDIST_RESOURCES.items():
        if index == 0:
            os.environ.setdefault(variable, values[0])
        elif variable == "METERING_TEST_FLEET_PORT" and variable in os.environ:
            # A port base set by the developer: the second worker takes the next thousand.
            os.environ[variable] = str(int(os.environ[variable]) + 1000)
        else:
            os.environ[variable] = values[1]


def pytest_configure(config: pytest.Config) -> None:
    _move_clock()
    _separate_xdist_worker()
    from devtools import devdb

    if os.environ.get("DATABASE_URL"):
        devdb.ensure_database(os.environ["DATABASE_URL"])
    else:
        devdb.start()


def pytest_report_header(config: pytest.Config) -> str | None:
    raw = os.environ.get(CLOCK_VARIABLE)
    if not raw:
        return None
    return f"clock moved: {CLOCK_VARIABLE}={raw} (now {datetime.now(UTC).isoformat()})"


pytest_plugins = ["tests.fixtures"]
