"""Suite-wide set-up: a real PostgreSQL (DATABASE_URL, else the embedded server)."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from config import devdb

    if os.environ.get("DATABASE_URL"):
        devdb.ensure_database(os.environ["DATABASE_URL"])
    else:
        devdb.start()


pytest_plugins = ["tests.fixtures"]
