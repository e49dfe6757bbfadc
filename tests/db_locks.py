"""Table locks held from a second connection, to stop another process's writes at a
known point (a gateway's log batch, a worker's store) without touching its code."""

from __future__ import annotations

import time

import psycopg
from django.conf import settings


def hold_share_lock(table: str) -> psycopg.Connection:
    """``LOCK TABLE … IN SHARE MODE`` on a new connection, held until it is closed: reads
    go on, every insert, update or delete of ``table`` waits."""
    database = settings.DATABASES["default"]
    conn = psycopg.connect(
        host=database["HOST"] or "127.0.0.1",
        port=database["PORT"] or 5432,
        user=database["USER"],
        password=database["PASSWORD"] or None,
        dbname=database["NAME"],
    )
    conn.execute(f"LOCK TABLE {table} IN SHARE MODE")  # a name of ours, not input
    return conn


def wait_for_lock_waiter(lock: psycopg.Connection, *, timeout_s: float = 20.0) -> int:
    """The pid of a backend (another process's) waiting on a lock, once there is one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Activity statistics are a snapshot per transaction, and the lock's transaction
        # is open: take a fresh one each time.
        lock.execute("SELECT pg_stat_clear_snapshot()")
        row = lock.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() LIMIT 1"
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.05)
    raise AssertionError("no backend waited on the lock")
