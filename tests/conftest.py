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
    offset_ns = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    os.environ["HASHGRID_TEST_CLOCK_OFFSET_NS"] = str(offset_ns - time.time_ns())
    paths = [
        str(MOVED_CLOCK_DIR),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    # This process already started: apply the same module here.
    import tests.moved_clock.sitecustomize  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    _move_clock()
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
