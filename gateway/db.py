"""The gateway's one database thread: every ORM call runs there, never on the event loop.

One thread, hence one connection (Django's connections are per thread), reused for the
life of the process; the catalog's refresh and the request log's batches take turns on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.db import DatabaseError, close_old_connections, connection

P = ParamSpec("P")
T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")


async def run(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(function, *args, **kwargs))


def reset_connection() -> None:
    """Drop a connection that failed, so the next call opens a fresh one (never raises:
    the database may still be down, and the caller retries on its next tick)."""
    # ``close`` forgets the connection even when closing it fails.
    with contextlib.suppress(DatabaseError):
        close_old_connections()
        if connection.connection is not None and not connection.is_usable():
            connection.close()


def close() -> None:
    connection.close()
