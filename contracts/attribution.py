"""Attribution: which allocation or API key each metered usage record bills to.

Fills ``allocation_id`` and ``api_key_id`` of metering's ``UsageRecord`` rows (the seam
``capacity.metering.attribution.attribute_records`` calls this through the hook that
``ContractsConfig.ready`` registers; capacity never imports contracts). Idempotent: only
rows still null are touched, so running it twice changes nothing.

- Reserved work (``workload_kind = 'allocation'``): the allocation whose GPU is the
  record's and whose period contains the record's window start. The agent's ``ref`` is
  informative only; our allocation table decides (the exclusion constraint guarantees at
  most one match).
- On-demand work is billed by API key. The inference gateway passes the calling key's
  display prefix to the node, which reports ``ref = "<product slug>@<key prefix>"`` for
  inference and ``"gpu@<key prefix>"`` for on-demand GPU time. A record is attributed to
  the key only if the key is linked to a line of that kind (and product, or offer site
  and GPU model) on an active contract, was created before the window and was not revoked
  before it: **a revoked key stops being attributed** from its revocation on.
"""

from __future__ import annotations

from django.apps import apps
from django.db import connection
from django.db.models import QuerySet

from accounts.models import ApiKey
from contracts.models import Allocation, Contract, ContractLine, LineApiKey

KEY_SEPARATOR = "@"
ON_DEMAND_GPU_REF = "gpu"


def _tables() -> dict[str, str]:
    usage = apps.get_model("metering", "UsageRecord")
    gpu = apps.get_model("capacity", "GpuDevice")
    node = apps.get_model("capacity", "Node")
    offer = apps.get_model("capacity", "Offer")
    return {
        "usage": usage._meta.db_table,
        "allocation": Allocation._meta.db_table,
        "link": LineApiKey._meta.db_table,
        "line": ContractLine._meta.db_table,
        "contract": Contract._meta.db_table,
        "api_key": ApiKey._meta.db_table,
        "product": ContractLine._meta.get_field("inference_product").related_model._meta.db_table,
        "gpu": gpu._meta.db_table,
        "node": node._meta.db_table,
        "offer": offer._meta.db_table,
    }


# One statement for the three rules (one plan, one round trip per batch of records):
# reserved work by allocation first, so GPU time inside a reservation is never billed as
# on demand; then inference and on-demand GPU time by the API key in the ref.
_ATTRIBUTE_SQL = """
WITH candidate AS MATERIALIZED (
  SELECT r.id, r.gpu_id, r.window_start, r.workload_kind, r.workload_ref
  FROM {usage} AS r
  WHERE r.id IN ({ids}) AND r.allocation_id IS NULL AND r.api_key_id IS NULL
    AND r.workload_kind IN ('allocation', 'inference')
), by_allocation AS (
  SELECT r.id, a.id AS allocation_id
  FROM candidate AS r
  JOIN {allocation} AS a ON a.gpu_device_id = r.gpu_id AND a.period @> r.window_start
  WHERE r.workload_kind = 'allocation'
), key_in_force AS (
  SELECT k.id, k.prefix, k.created_at, k.revoked_at, cl.kind, cl.ended_at,
         cl.inference_product_id, cl.offer_id
  FROM {api_key} AS k
  JOIN {link} AS l ON l.api_key_id = k.id
  JOIN {line} AS cl ON cl.id = l.line_id AND cl.kind IN ('inference', 'on_demand_gpu')
  JOIN {contract} AS c ON c.id = cl.contract_id AND c.state = 'active'
), by_inference_key AS (
  SELECT r.id, k.id AS api_key_id
  FROM candidate AS r
  JOIN {product} AS p ON r.workload_ref LIKE p.slug || '@%%'
  JOIN key_in_force AS k
    ON k.kind = 'inference' AND k.inference_product_id = p.id
   AND r.workload_ref = p.slug || '@' || k.prefix
  WHERE r.workload_kind = 'inference'
    AND k.created_at <= r.window_start
    AND (k.revoked_at IS NULL OR k.revoked_at > r.window_start)
    AND (k.ended_at IS NULL OR k.ended_at > r.window_start)
), by_gpu_key AS (
  SELECT r.id, k.id AS api_key_id
  FROM candidate AS r
  JOIN key_in_force AS k
    ON k.kind = 'on_demand_gpu' AND r.workload_ref = 'gpu@' || k.prefix
  JOIN {offer} AS o ON o.id = k.offer_id
  WHERE r.workload_kind = 'allocation'
    AND k.created_at <= r.window_start
    AND (k.revoked_at IS NULL OR k.revoked_at > r.window_start)
    AND (k.ended_at IS NULL OR k.ended_at > r.window_start)
    AND NOT EXISTS (SELECT 1 FROM by_allocation AS b WHERE b.id = r.id)
    AND EXISTS (
      SELECT 1 FROM {gpu} AS g JOIN {node} AS n ON n.id = g.node_id
      WHERE g.id = r.gpu_id AND n.site_id = o.site_id AND n.gpu_model_id = o.gpu_model_id
    )
), matched AS (
  SELECT id, allocation_id, NULL::bigint AS api_key_id FROM by_allocation
  UNION ALL SELECT id, NULL, api_key_id FROM by_inference_key
  UNION ALL SELECT id, NULL, api_key_id FROM by_gpu_key
)
UPDATE {usage} AS r
SET allocation_id = m.allocation_id, api_key_id = m.api_key_id
FROM matched AS m
WHERE r.id = m.id
"""


def attribute_usage_records(*, records: QuerySet) -> int:  # type: ignore[type-arg]
    """Attribute ``records`` (a ``UsageRecord`` queryset); return how many rows changed.

    Allocations first, so GPU time inside a reservation is never billed as on demand.
    """
    ids_sql, ids_params = records.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(_ATTRIBUTE_SQL.format(ids=ids_sql, **_tables()), ids_params)
        return cursor.rowcount


def workload_ref_for_key(*, api_key: ApiKey, product_slug: str | None) -> str:
    """The ``ref`` a node reports for work done for ``api_key`` (the gateway's contract)."""
    return f"{product_slug or ON_DEMAND_GPU_REF}{KEY_SEPARATOR}{api_key.prefix}"
