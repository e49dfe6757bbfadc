"""Attribution: which contract line (and workload, allocation) each metered usage record
of GPU work belongs to. By ids, decided once.

The seam ``capacity.metering.attribution.attribute_records`` calls this through the hook
``ContractsConfig.ready`` registers (capacity never imports contracts). One statement per
batch of records fills, where still null:

- for an **assignment** record (``workload_kind = 'assignment'``, agent protocol v1.1):
  ``workload_id`` and ``line_id`` of the workload whose public id the ``ref`` is, when it
  was assigned to the record's node and GPU (validation already quarantined busy time
  no assignment covers, ``unassigned``), and ``allocation_id`` of the allocation holding
  the GPU at the window's start (an instance's own, or the reservation's); and the same
  line on the hourly rollup rows of that work (``HourlyUsage``; one row is one GPU, one
  assignment, one hour, so one workload's);
- for a legacy **allocation** record: ``allocation_id`` and ``line_id`` of the
  reservation allocation whose GPU is the record's and whose period contains the
  window's start (the agent's ``ref`` is informative only; the exclusion constraint
  guarantees at most one match).

Nothing here bills: a reserved line pays for its allocations and an on-demand GPU line
for the seconds its instances held GPUs (``contracts.billable_usage``), so GPU work only
shows on the buyer's and partner's pages. On-demand GPU time is no longer tied to API
keys by ``"gpu@<key prefix>"`` refs; such records are stored and attributed to nobody.
Inference is not attributed here: a request's receipt names its line by id and ingest
bills it (``capacity.metering.ingest``, ``InferenceUsageHour``).

Idempotent: only rows still unattributed are touched, so running it twice changes nothing.
"""

from __future__ import annotations

from django.db import connection
from django.db.models import QuerySet

from capacity.metering.models import HourlyUsage, UsageRecord
from contracts.models import Allocation, Workload

_ATTRIBUTE_SQL = """
WITH candidate AS MATERIALIZED (
  SELECT r.id, r.node_id, r.gpu_id, r.window_start, r.workload_kind, r.workload_ref
  FROM {usage} AS r
  WHERE r.id IN ({ids}) AND r.line_id IS NULL
    AND r.workload_kind IN ('allocation', 'assignment')
), by_allocation AS (
  SELECT r.id, a.id AS allocation_id, NULL::bigint AS workload_id, a.line_id
  FROM candidate AS r
  JOIN {allocation} AS a ON a.gpu_device_id = r.gpu_id AND a.period @> r.window_start
  WHERE r.workload_kind = 'allocation' AND a.workload_id IS NULL
), by_assignment AS (
  SELECT r.id, a.id AS allocation_id, w.id AS workload_id, w.line_id
  FROM candidate AS r
  JOIN {workload} AS w ON w.public_id = r.workload_ref AND w.node_id = r.node_id
  JOIN {workload_gpus} AS wg ON wg.workload_id = w.id AND wg.gpudevice_id = r.gpu_id
  LEFT JOIN {allocation} AS a ON a.gpu_device_id = r.gpu_id AND a.period @> r.window_start
  WHERE r.workload_kind = 'assignment'
), stamped_hours AS (
  UPDATE {hourly} AS h
  SET line_id = s.line_id
  FROM (SELECT DISTINCT r.gpu_id, r.workload_ref, b.line_id,
               date_trunc('hour', r.window_start, 'UTC') AS hour
        FROM candidate AS r JOIN by_assignment AS b ON b.id = r.id) AS s
  WHERE h.gpu_id = s.gpu_id AND h.workload_kind = 'assignment'
    AND h.workload_ref = s.workload_ref AND h.hour = s.hour AND h.line_id IS NULL
), matched AS (
  SELECT * FROM by_allocation
  UNION ALL
  SELECT * FROM by_assignment
)
UPDATE {usage} AS r
SET allocation_id = m.allocation_id, workload_id = m.workload_id, line_id = m.line_id
FROM matched AS m
WHERE r.id = m.id
"""


def _tables() -> dict[str, str]:
    return {
        "usage": UsageRecord._meta.db_table,
        "hourly": HourlyUsage._meta.db_table,
        "allocation": Allocation._meta.db_table,
        "workload": Workload._meta.db_table,
        "workload_gpus": Workload.gpus.through._meta.db_table,
    }


def attribute_usage_records(*, records: QuerySet[UsageRecord]) -> int:
    """Attribute ``records`` and stamp their rollup hours; return how many records changed."""
    ids_sql, ids_params = records.order_by().values("pk").query.sql_with_params()
    sql = _ATTRIBUTE_SQL.format(ids=ids_sql, **_tables())
    with connection.cursor() as cursor:
        cursor.execute(sql, ids_params)
        return cursor.rowcount
