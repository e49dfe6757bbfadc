"""A node's health over the days: each health answer added to its node's UTC day.

``/v1/health`` is asked every few polls (``polling.health_due``); each answer's sample
(``polling.HealthSample``) goes into ``NodeHealthDay`` with one statement per batch of
polls — an upsert that adds to the day's sums and keeps its peak — so the node page reads
at most a row per day instead of every sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from django.db import connection

from capacity.metering.polling import HealthSample

_UPSERT = """
INSERT INTO metering_nodehealthday
    (node_id, day, samples, utilization_pct_sum, temperature_c_sum, temperature_c_max,
     power_mw_sum)
SELECT node_id, day, count(*), sum(utilization), sum(temperature), max(temperature),
       sum(power)
FROM unnest(%(node_ids)s::bigint[], %(days)s::date[], %(utilizations)s::int[],
            %(temperatures)s::int[], %(powers)s::bigint[])
     AS s(node_id, day, utilization, temperature, power)
WHERE EXISTS (SELECT 1 FROM capacity_node n WHERE n.id = s.node_id)
GROUP BY node_id, day
ON CONFLICT (node_id, day) DO UPDATE SET
    samples = metering_nodehealthday.samples + EXCLUDED.samples,
    utilization_pct_sum = metering_nodehealthday.utilization_pct_sum
        + EXCLUDED.utilization_pct_sum,
    temperature_c_sum = metering_nodehealthday.temperature_c_sum + EXCLUDED.temperature_c_sum,
    temperature_c_max = greatest(metering_nodehealthday.temperature_c_max,
                                 EXCLUDED.temperature_c_max),
    power_mw_sum = metering_nodehealthday.power_mw_sum + EXCLUDED.power_mw_sum
"""


def record_samples(samples: Sequence[tuple[int, datetime, HealthSample]]) -> None:
    """Add ``(node id, when, sample)`` to the nodes' days, in one statement."""
    if not samples:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _UPSERT,
            {
                "node_ids": [node_id for node_id, _, _ in samples],
                "days": [at.astimezone(UTC).date() for _, at, _ in samples],
                "utilizations": [sample.utilization_pct for _, _, sample in samples],
                "temperatures": [sample.temperature_c_max for _, _, sample in samples],
                "powers": [sample.power_mw for _, _, sample in samples],
            },
        )
