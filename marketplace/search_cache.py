"""Search results cached until the inventory changes: exact at commit.

What search shows (free GPUs per pool, offers, prices, sites, stored availability) changes
only in transactions that also write ``InventoryVersion`` (database triggers, at commit;
see ``marketplace.models.InventoryVersion``). A result is cached under the version read
*before* it was computed, so whatever a key holds is at least as new as its version: once
a reservation commits, the next search reads the new version and computes afresh.

Two rules keep it exact:

- the cache is used only outside a transaction (autocommit, as a search request runs): a
  transaction may hold uncommitted inventory changes, which must never be cached (they
  could roll back) and must be seen by the transaction itself;
- entries also expire after ``CACHE_SECONDS``, for the one input that moves with the
  clock rather than with a commit: a pool's 30-day availability is evaluated live when
  its stored figure is older than ``FRESH_FOR`` (a stopped beat).

The cache is Django's ``search`` cache: each process's own memory, bounded
(``SEARCH_CACHE_ENTRIES``), so no query string, however many a client invents, can grow
it or push out the rate limits kept in the ``default`` cache. A cache that fails is
bypassed: search computes its page, as it would on a miss.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TypeVar

from django.core.cache import caches
from django.db import connection

from marketplace.models import InventoryVersion

CACHE_SECONDS = 60
# Part of every key: bump it when what a cached value holds changes shape.
FORMAT = 1

logger = logging.getLogger(__name__)

T = TypeVar("T")

_VERSION_SQL = f"SELECT version FROM {InventoryVersion._meta.db_table} WHERE id = 1"  # noqa: S608


def inventory_version() -> int | None:
    """The committed inventory version; None inside a transaction or before the first
    inventory write (then nothing is cached)."""
    if connection.in_atomic_block:
        return None
    with connection.cursor() as cursor:
        cursor.execute(_VERSION_SQL)
        row = cursor.fetchone()
    return int(row[0]) if row else None


def cached(namespace: str, parts: object, compute: Callable[[], T]) -> T:
    """``compute()``'s value for ``parts`` (a repr-stable description of the inputs:
    filters, window, page) at the current inventory version, from the cache when it has
    it. Computes without caching when ``inventory_version`` is None."""
    version = inventory_version()
    if version is None:
        return compute()
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    key = f"search:{FORMAT}:{connection.settings_dict['NAME']}:{namespace}:{version}:{digest}"
    cache = caches["search"]
    try:
        value = cache.get(key)
    except Exception:  # a cache that fails is a miss, never a failed search
        logger.warning("search cache unavailable", exc_info=True)
        return compute()
    if value is None:
        value = compute()
        try:
            cache.set(key, value, CACHE_SECONDS)
        except Exception:
            logger.warning("search cache unavailable", exc_info=True)
    return value
