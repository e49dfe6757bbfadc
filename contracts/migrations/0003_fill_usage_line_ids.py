"""Fill the contract lines of usage already stored (metering 0005 added the columns).

Rating used to find a rollup's line by joining its ``ref`` to key prefixes when it read
it; it now reads ``HourlyUsage.line_id``, which attribution stamps. So every existing
rollup row of on-demand work gets the key and line its ref names (the rule of
``contracts.attribution`` as of this migration, frozen here), and existing databases bill
what they billed before. Records attributed by the old rule get the line of their
allocation or key; records it left alone (a revoked key, a contract not active) get the
allocation holding their GPU, or else the key their ref names, as attribution now decides.
"""

from django.db import migrations

# Stamp the rows of ``table`` still without a line with the one key (and its line) the
# ref of their (GPU, kind, ref) names.
_STAMP = """
WITH named AS (
  SELECT DISTINCT gpu_id, workload_kind, workload_ref FROM {table}
  WHERE line_id IS NULL AND workload_kind IN ('allocation', 'inference')
    AND strpos(workload_ref, '@') > 1
), resolved AS (
  SELECT x.gpu_id, x.workload_kind, x.workload_ref,
         min(k.id) AS api_key_id, min(cl.id) AS line_id
  FROM named AS x
  JOIN capacity_gpudevice AS g ON g.id = x.gpu_id
  JOIN capacity_node AS nd ON nd.id = g.node_id
  JOIN accounts_apikey AS k
    ON k.prefix = substr(x.workload_ref, strpos(x.workload_ref, '@') + 1)
  JOIN contracts_lineapikey AS link ON link.api_key_id = k.id
  JOIN contracts_contractline AS cl ON cl.id = link.line_id
  LEFT JOIN contracts_inferenceproduct AS p ON p.id = cl.inference_product_id
  LEFT JOIN capacity_offer AS o ON o.id = cl.offer_id
  WHERE (x.workload_kind = 'inference' AND cl.kind = 'inference'
         AND p.slug = left(x.workload_ref, strpos(x.workload_ref, '@') - 1))
     OR (x.workload_kind = 'allocation' AND cl.kind = 'on_demand_gpu'
         AND left(x.workload_ref, strpos(x.workload_ref, '@') - 1) = 'gpu'
         AND o.site_id = nd.site_id AND o.gpu_model_id = nd.gpu_model_id)
  GROUP BY x.gpu_id, x.workload_kind, x.workload_ref
  HAVING count(*) = 1
)
UPDATE {table} AS t
SET api_key_id = s.api_key_id, line_id = s.line_id
FROM resolved AS s
WHERE t.line_id IS NULL AND (t.gpu_id, t.workload_kind, t.workload_ref)
                          = (s.gpu_id, s.workload_kind, s.workload_ref)
"""

FILL = [
    # Records the old rule attributed: the line of their allocation or key.
    """
    UPDATE metering_usagerecord AS r SET line_id = a.line_id
    FROM contracts_allocation AS a
    WHERE r.allocation_id = a.id AND r.line_id IS NULL
    """,
    """
    UPDATE metering_usagerecord AS r SET line_id = link.line_id
    FROM contracts_lineapikey AS link
    WHERE r.api_key_id = link.api_key_id AND r.line_id IS NULL
    """,
    # Every rollup row of on-demand work: what rating reads.
    _STAMP.format(table="metering_hourlyusage"),
    # Records never attributed: reserved work first, then the key the ref names.
    """
    UPDATE metering_usagerecord AS r SET allocation_id = a.id, line_id = a.line_id
    FROM contracts_allocation AS a
    WHERE r.line_id IS NULL AND r.workload_kind = 'allocation'
      AND a.gpu_device_id = r.gpu_id AND a.period @> r.window_start
    """,
    _STAMP.format(table="metering_usagerecord"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("contracts", "0002_default_sla_and_inference_catalog"),
        ("metering", "0005_usage_line_ids"),
        ("accounts", "0002_accounts_tables"),
        ("capacity", "0001_initial"),
    ]

    operations = [migrations.RunSQL(sql, migrations.RunSQL.noop) for sql in FILL]
