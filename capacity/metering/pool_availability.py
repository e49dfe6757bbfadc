"""30-day availability of every offered pool (a site's GPUs of one model), rolled up.

The figure of a pool is the offer page's (``selectors.offer_availability``): the rule of
``availability.gpu_availability`` summed over the pool's nodes neither pending nor
retired, so search and an offer's page cannot disagree, and a figure is never above
100 % (it once was: a SQL copy of the rule counted the bits of whole days, before the
30 days and before enrollment, over the minutes since enrollment only).

Why a rollup: the rule reads 31 bitmap rows per GPU of the pool, so sorting or filtering
search by availability over 500 offers would read them on every search.
``refresh_pool_availability`` computes every offered pool at one instant and stores the
figures in ``PoolAvailability`` (one statement, idempotent); beat runs it every few
minutes. Search serves a pool's stored figure while it is fresh (``FRESH_FOR``) and
computes the pools without one live (``live_pool_figures``), handed to its query as
a parameter, so a pool offered since the last refresh, or a stopped beat, costs speed,
never a missing or stale figure.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from capacity.metering.availability import NOTHING, AvailabilityFigure
from capacity.metering.models import PoolAvailability
from capacity.metering.selectors import availability_by_node
from capacity.models import Node, NodeStatus, Offer

# How old a stored figure may be and still be served (beat refreshes every 5 minutes).
FRESH_FOR = timedelta(minutes=15)

Pool = tuple[int, int]  # (site_id, gpu_model_id)


def pool_figures(*, pools: Iterable[Pool], now: datetime) -> dict[Pool, Decimal | None]:
    """The availability percent at ``now`` of each pool (None while nothing is
    measurable), by the offer page's rule."""
    pools = set(pools)
    if not pools:
        return {}
    nodes = [
        node
        for node in Node.objects.filter(
            site_id__in={site for site, _ in pools},
            gpu_model_id__in={model for _, model in pools},
        ).exclude(status__in=(NodeStatus.PENDING, NodeStatus.RETIRED))
        if (node.site_id, node.gpu_model_id) in pools
    ]
    by_node = availability_by_node(nodes, now=now)
    totals: dict[Pool, AvailabilityFigure] = defaultdict(lambda: NOTHING)
    for node in nodes:
        totals[(node.site_id, node.gpu_model_id)] += by_node[node.pk]
    return {pool: totals[pool].percent for pool in pools}


def _offered_pools() -> set[Pool]:
    return set(Offer.objects.filter(is_active=True).values_list("site_id", "gpu_model_id"))


def live_pool_figures(*, now: datetime) -> dict[Pool, Decimal | None]:
    """Figures at ``now`` of the offered pools without a fresh stored one, computed now
    (empty, in one query, while beat keeps the rollup fresh)."""
    fresh = PoolAvailability.objects.filter(
        site_id=OuterRef("site_id"),
        gpu_model_id=OuterRef("gpu_model_id"),
        computed_at__gt=now - FRESH_FOR,
        computed_at__lte=now,
    )
    stale = (
        Offer.objects.filter(is_active=True)
        .exclude(Exists(fresh))
        .values_list("site_id", "gpu_model_id")
        .distinct()
    )
    return pool_figures(pools=stale, now=now)


_STORED_OR_LIVE_SQL = """
CASE WHEN EXISTS (
  SELECT 1 FROM {rollup} AS stored
  WHERE stored.site_id = {pool}.site_id AND stored.gpu_model_id = {pool}.gpu_model_id
    AND stored.computed_at > %s AND stored.computed_at <= %s)
THEN (
  SELECT stored.percent FROM {rollup} AS stored
  WHERE stored.site_id = {pool}.site_id AND stored.gpu_model_id = {pool}.gpu_model_id)
ELSE (%s::jsonb ->> ({pool}.site_id || ':' || {pool}.gpu_model_id))::numeric
END
"""


def stored_or_live_availability_sql(*, pool: str, now: datetime) -> tuple[str, tuple[object, ...]]:
    """The availability percent at ``now`` of the pool whose ``site_id`` and
    ``gpu_model_id`` are columns of the table or alias ``pool`` (a name from our code), as
    a parenthesised SQL expression and its parameters: the stored figure when it was
    computed within ``FRESH_FOR`` before ``now``, else the one ``live_pool_figures``
    computed."""
    live = {
        f"{site}:{model}": None if percent is None else str(percent)
        for (site, model), percent in live_pool_figures(now=now).items()
    }
    sql = _STORED_OR_LIVE_SQL.format(rollup=PoolAvailability._meta.db_table, pool=pool)
    return f"({sql})", (now - FRESH_FOR, now, json.dumps(live))


_REFRESH_SQL = """
INSERT INTO {rollup} (site_id, gpu_model_id, percent, computed_at)
SELECT (figure ->> 0)::bigint, (figure ->> 1)::bigint, (figure ->> 2)::numeric, %s
FROM jsonb_array_elements(%s::jsonb) AS figure
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
    figures = pool_figures(pools=_offered_pools(), now=now)
    rows = [
        [site, model, None if percent is None else str(percent)]
        for (site, model), percent in sorted(figures.items())
    ]
    with connection.cursor() as cursor:
        # The table name comes from model metadata, values are parameters.
        cursor.execute(
            _REFRESH_SQL.format(rollup=PoolAvailability._meta.db_table),
            (now, json.dumps(rows)),
        )
        stored = cursor.rowcount
    PoolAvailability.objects.filter(computed_at__lt=now).delete()
    return stored
