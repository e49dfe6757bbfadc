"""Celery tasks: thin, idempotent, ids in, services do the work.

``sweep`` runs from beat every ``METERING_POLL_INTERVAL_SECONDS`` (the PeriodicTask is
created by migration 0002 and editable in the admin); it fans out ``poll_batch`` tasks.
Both may run twice or concurrently without harm: claims skip locked rows and every
page is stored by a conditional, idempotent statement. Settings ``acks_late`` and
``reject_on_worker_lost`` make a batch whose worker died run again.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.utils import timezone

from capacity.metering import batch
from capacity.metering import sweep as sweeping
from capacity.metering.polling import DEFAULT_CONCURRENCY

logger = logging.getLogger(__name__)

# Retries of a batch whose database connection failed (each retry is a full, idempotent
# re-poll of the batch).
MAX_BATCH_RETRIES = 5


def _interval_seconds() -> int:
    return int(settings.METERING_POLL_INTERVAL_SECONDS)


@shared_task(name="capacity.metering.tasks.sweep", ignore_result=True)
def sweep(max_nodes: int | None = None) -> dict[str, int]:
    result = sweeping.sweep(
        now=timezone.now(),
        interval_seconds=_interval_seconds(),
        enqueue=lambda node_ids: poll_batch.delay(node_ids),
        batch_size=getattr(settings, "METERING_BATCH_SIZE", sweeping.DEFAULT_BATCH_SIZE),
        max_nodes=max_nodes,
    )
    logger.info("metering sweep: %s", result)
    return asdict(result)


@shared_task(
    bind=True,
    name="capacity.metering.tasks.poll_batch",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_BATCH_RETRIES,
    # Backstops over the per-poll deadlines (settings): the soft limit raises in the task,
    # which cancels the polls still running; the hard one replaces the worker process.
    soft_time_limit=settings.METERING_BATCH_SOFT_TIME_LIMIT_SECONDS,
    time_limit=settings.METERING_BATCH_TIME_LIMIT_SECONDS,
)
def poll_batch(self, node_ids: list[int]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    try:
        result = batch.poll_and_store(
            node_ids,
            now=timezone.now(),
            interval_seconds=_interval_seconds(),
            concurrency=getattr(settings, "METERING_POLL_CONCURRENCY", DEFAULT_CONCURRENCY),
        )
    except (OperationalError, InterfaceError) as error:
        # The connection dropped (failover, pg_terminate_backend): what was committed
        # stays, the rest is polled again on a fresh connection.
        logger.warning(
            "metering batch of %d nodes: database error, retrying: %s", len(node_ids), error
        )
        connection.close()
        raise self.retry(exc=error, countdown=1) from error
    except DatabaseError:
        connection.close()
        raise
    logger.info("metering batch of %d nodes: %s", len(node_ids), result)
    return asdict(result)


@shared_task(name="capacity.metering.tasks.refresh_pool_availability", ignore_result=True)
def refresh_pool_availability() -> int:
    """Beat, every 5 minutes: store every offered pool's 30-day availability for search."""
    from capacity.metering.pool_availability import refresh_pool_availability as refresh

    stored = refresh(now=timezone.now())
    logger.info("pool availability: %d pools stored", stored)
    return stored


@shared_task(name="capacity.metering.tasks.attribute_usage", ignore_result=True)
def attribute_usage() -> int:
    """Beat, every minute: attribute the usage records stored since the last run to the
    allocations and API keys they bill (``attribution.attribute_new_records``)."""
    from capacity.metering.attribution import attribute_new_records

    attributed = attribute_new_records()
    logger.info("attribution: %d usage records attributed", attributed)
    return attributed
