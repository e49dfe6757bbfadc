"""Attribution: which contract line each metered usage record, and each rollup hour of
on-demand work, belongs to. By ids, decided once.

The seam ``capacity.metering.attribution.attribute_records`` calls this through the hook
``ContractsConfig.ready`` registers (capacity never imports contracts). One statement per
batch of records fills, where still null:

- on the records (``UsageRecord``): ``allocation_id`` and ``line_id`` for reserved work,
  the allocation whose GPU is the record's and whose period contains the record's window
  start (the agent's ``ref`` is informative only; our allocation table decides, and the
  exclusion constraint guarantees at most one match); otherwise, for on-demand GPU time,
  ``api_key_id`` and ``line_id`` of the key the ``ref`` names;
- on the hourly rollups those records were added to (``HourlyUsage``): ``api_key_id`` and
  ``line_id`` of the key the ``ref`` names.

On-demand GPU time is reported as ``ref = "gpu@<key prefix>"`` (until instances carry
assignments of their own). That ref is resolved to a key here and nowhere else: the key
with that prefix linked to an on-demand GPU line of an offer at the GPU's site and of its
GPU model. A ref that names no such key, or more than one, is nobody's.

Inference is not attributed here: a request's receipt names its line by id, and ingest
bills it (``capacity.metering.ingest``, ``InferenceUsageHour``). The old
``"<product>@<key prefix>"`` refs of inference windows are no longer resolved, so such
records are stored for their GPU time and billed to nobody. The answer depends only on the GPU and the ref, never on
the time, so every record of a rollup row gets the row's line and a stamped row stays
right as later records add to it. *Whether* the line pays for an hour (the key and the
line in force, no reservation holding the GPU) is the rule of
``contracts.billable_usage``, applied when usage is read.

Idempotent: only rows still unattributed are touched, so running it twice changes nothing.
"""

from __future__ import annotations

from django.db import connection
from django.db.models import QuerySet

from accounts.models import ApiKey
from capacity.metering.models import HourlyUsage, UsageRecord
from capacity.models import GpuDevice, Node, Offer
from contracts.models import Allocation, ContractLine, LineApiKey

KEY_SEPARATOR = "@"
ON_DEMAND_GPU_REF = "gpu"

# (GPU, workload kind, ref) → the one key (and its line) the ref names, from ``named``.
# The only place a ref is read.
RESOLVE_REFS_SQL = """
  SELECT n.gpu_id, n.workload_kind, n.workload_ref,
         min(k.id) AS api_key_id, min(cl.id) AS line_id
  FROM named AS n
  JOIN {gpu} AS g ON g.id = n.gpu_id
  JOIN {node} AS nd ON nd.id = g.node_id
  JOIN {api_key} AS k ON k.prefix = substr(n.workload_ref, strpos(n.workload_ref, '@') + 1)
  JOIN {link} AS l ON l.api_key_id = k.id
  JOIN {line} AS cl ON cl.id = l.line_id
  JOIN {offer} AS o ON o.id = cl.offer_id
  WHERE n.workload_kind = 'allocation' AND cl.kind = 'on_demand_gpu'
    AND left(n.workload_ref, strpos(n.workload_ref, '@') - 1) = 'gpu'
    AND o.site_id = nd.site_id AND o.gpu_model_id = nd.gpu_model_id
  GROUP BY n.gpu_id, n.workload_kind, n.workload_ref
  HAVING count(*) = 1
"""

_ATTRIBUTE_SQL = """
WITH candidate AS MATERIALIZED (
  SELECT r.id, r.gpu_id, r.window_start, r.workload_kind, r.workload_ref
  FROM {usage} AS r
  WHERE r.id IN ({ids}) AND r.line_id IS NULL AND r.workload_kind = 'allocation'
), by_allocation AS (
  SELECT r.id, a.id AS allocation_id, a.line_id
  FROM candidate AS r
  JOIN {allocation} AS a ON a.gpu_device_id = r.gpu_id AND a.period @> r.window_start
  WHERE r.workload_kind = 'allocation'
), named AS (
  SELECT DISTINCT gpu_id, workload_kind, workload_ref
  FROM candidate
  WHERE strpos(workload_ref, '@') > 1
), by_ref AS ({resolve}
), stamped_hours AS (
  UPDATE {hourly} AS h
  SET api_key_id = k.api_key_id, line_id = k.line_id
  FROM (SELECT DISTINCT gpu_id, workload_kind, workload_ref,
               date_trunc('hour', window_start, 'UTC') AS hour
        FROM candidate) AS c
  JOIN by_ref AS k USING (gpu_id, workload_kind, workload_ref)
  WHERE h.gpu_id = c.gpu_id AND h.workload_kind = c.workload_kind
    AND h.workload_ref = c.workload_ref AND h.hour = c.hour AND h.line_id IS NULL
), matched AS (
  SELECT id, allocation_id, NULL::bigint AS api_key_id, line_id FROM by_allocation
  UNION ALL
  SELECT r.id, NULL, k.api_key_id, k.line_id
  FROM candidate AS r
  JOIN by_ref AS k USING (gpu_id, workload_kind, workload_ref)
  WHERE NOT EXISTS (SELECT 1 FROM by_allocation AS b WHERE b.id = r.id)
)
UPDATE {usage} AS r
SET allocation_id = m.allocation_id, api_key_id = m.api_key_id, line_id = m.line_id
FROM matched AS m
WHERE r.id = m.id
"""


def _tables() -> dict[str, str]:
    return {
        "usage": UsageRecord._meta.db_table,
        "hourly": HourlyUsage._meta.db_table,
        "allocation": Allocation._meta.db_table,
        "link": LineApiKey._meta.db_table,
        "line": ContractLine._meta.db_table,
        "api_key": ApiKey._meta.db_table,
        "gpu": GpuDevice._meta.db_table,
        "node": Node._meta.db_table,
        "offer": Offer._meta.db_table,
    }


def attribute_usage_records(*, records: QuerySet[UsageRecord]) -> int:
    """Attribute ``records`` and stamp their rollup hours; return how many records changed.

    Allocations first, so a record of GPU time inside a reservation is the reservation's.
    """
    ids_sql, ids_params = records.order_by().values("pk").query.sql_with_params()
    tables = _tables()
    sql = _ATTRIBUTE_SQL.format(ids=ids_sql, resolve=RESOLVE_REFS_SQL.format(**tables), **tables)
    with connection.cursor() as cursor:
        cursor.execute(sql, ids_params)
        return cursor.rowcount


def workload_ref_for_key(*, api_key: ApiKey) -> str:
    """The ``ref`` a node reports for on-demand GPU time done for ``api_key``."""
    return f"{ON_DEMAND_GPU_REF}{KEY_SEPARATOR}{api_key.prefix}"
