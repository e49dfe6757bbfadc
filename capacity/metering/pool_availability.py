"""30-day availability of every offered pool (a site's GPUs of one model), rolled up.

The rule is one SQL expression, ``availability_sql``: observed-available GPU-minutes
over the last 30 days out of the minutes the pool's GPUs existed (the per-minute bitmaps
of ``GpuAvailabilityDay``, ``bit_count`` in SQL), on nodes neither pending nor retired.
Maintenance stays in the denominator: the SLA figure (``contracts.sla``) is the one that
excludes announced maintenance. Null while metering has no data.

Why a rollup: the expression reads 31 bitmap rows per GPU of the pool (~1.3 ms for 80
GPUs), so sorting or filtering search by availability over 500 offers cost ~500 ms.
``refresh_pool_availability`` evaluates the same expression for every offered pool at
one instant and stores the figures in ``PoolAvailability`` (one statement, idempotent);
beat runs it every few minutes. Search reads a pool's stored figure while it is fresh
(``FRESH_FOR``) and evaluates the expression live otherwise, so a pool offered since the
last refresh, or a stopped beat, costs speed, never a missing or stale figure.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from capacity.metering.models import GpuAvailabilityDay, PoolAvailability
from capacity.models import GpuDevice, Node, NodeStatus, Offer

AVAILABILITY_DAYS = 30
# How old a stored figure may be and still be served (beat refreshes every 5 minutes).
FRESH_FOR = timedelta(minutes=15)

_AVAILABILITY_SQL = """
SELECT CASE WHEN sum(pool.counted_minutes) > 0
       THEN round(100.0 * coalesce(sum(pool.available_minutes), 0) / sum(pool.counted_minutes), 2)
       END
FROM (
  SELECT
    (SELECT coalesce(sum(bit_count(day.minutes)), 0) FROM {days} AS day
      WHERE day.gpu_id = gpu.id AND day.day >= %s AND day.day <= %s) AS available_minutes,
    greatest(0, floor(extract(epoch FROM (%s::timestamptz - greatest(
      %s::timestamptz, gpu.created_at, coalesce(node.enrolled_at, node.created_at)))) / 60))
      AS counted_minutes
  FROM {gpus} AS gpu JOIN {nodes} AS node ON node.id = gpu.node_id
  WHERE node.site_id = {pool}.site_id AND node.gpu_model_id = {pool}.gpu_model_id
    AND node.status NOT IN (%s, %s)
) AS pool
"""


def availability_sql(*, pool: str, now: datetime) -> tuple[str, tuple[date | str, ...]]:
    """The 30-day availability percent at ``now`` of the pool whose ``site_id`` and
    ``gpu_model_id`` are columns of the table or alias ``pool``, as a parenthesised SQL
    expression and its parameters. ``pool`` must be a table name or alias from our code."""
    days_table = GpuAvailabilityDay._meta.db_table
    until = now.replace(second=0, microsecond=0)
    since = until - timedelta(days=AVAILABILITY_DAYS)
    sql = _AVAILABILITY_SQL.format(
        days=days_table, gpus=GpuDevice._meta.db_table, nodes=Node._meta.db_table, pool=pool
    )
    # Bits of days partly outside [since, until) are counted only where set; days are
    # whole at both ends except the current one, whose future minutes are never set.
    params = (since.date(), until.date(), until, since, NodeStatus.PENDING, NodeStatus.RETIRED)
    return f"({sql})", params


_STORED_OR_LIVE_SQL = """
CASE WHEN EXISTS (
  SELECT 1 FROM {rollup} AS stored
  WHERE stored.site_id = {pool}.site_id AND stored.gpu_model_id = {pool}.gpu_model_id
    AND stored.computed_at > %s AND stored.computed_at <= %s)
THEN (
  SELECT stored.percent FROM {rollup} AS stored
  WHERE stored.site_id = {pool}.site_id AND stored.gpu_model_id = {pool}.gpu_model_id)
ELSE {live}
END
"""


def stored_or_live_availability_sql(
    *, pool: str, now: datetime
) -> tuple[str, tuple[date | str, ...]]:
    """Like ``availability_sql``, but the pool's stored figure when it was computed within
    ``FRESH_FOR`` before ``now`` (the live expression is evaluated only where it was not)."""
    live, live_params = availability_sql(pool=pool, now=now)
    sql = _STORED_OR_LIVE_SQL.format(rollup=PoolAvailability._meta.db_table, pool=pool, live=live)
    return f"({sql})", (now - FRESH_FOR, now, *live_params)


_REFRESH_SQL = """
INSERT INTO {rollup} (site_id, gpu_model_id, percent, computed_at)
SELECT pool.site_id, pool.gpu_model_id, {availability}, %s
FROM (SELECT DISTINCT site_id, gpu_model_id FROM {offers} WHERE is_active) AS pool
ON CONFLICT (site_id, gpu_model_id)
DO UPDATE SET percent = EXCLUDED.percent, computed_at = EXCLUDED.computed_at
WHERE {rollup}.computed_at <= EXCLUDED.computed_at
"""


@transaction.atomic
def refresh_pool_availability(*, now: datetime | None = None) -> int:
    """Store the availability at ``now`` of every pool an active offer lists; drop the
    figures of pools no longer offered. Returns the pools stored. Idempotent: running it
    again at the same ``now`` writes the same rows. A figure only moves forward in time
    (the upsert's condition), so an older run finishing after a newer one changes
    nothing."""
    now = now or timezone.now()
    availability, params = availability_sql(pool="pool", now=now)
    sql = _REFRESH_SQL.format(
        rollup=PoolAvailability._meta.db_table,
        availability=availability,
        offers=Offer._meta.db_table,
    )
    with connection.cursor() as cursor:
        # Table names come from model metadata, values are parameters.
        cursor.execute(sql, (*params, now))
        stored = cursor.rowcount
    PoolAvailability.objects.filter(computed_at__lt=now).delete()
    return stored
