"""The inventory version search caches on (``marketplace.models.InventoryVersion``).

A deferred constraint trigger on every table search reads bumps the version once per
transaction, at commit (so the version row is locked only while committing, and a
transaction that writes thousands of rows writes it once). Node updates count only when a
column search reads changes: metering updates every node on every poll. ``TRUNCATE``
(test flushes) bumps it too. Values come from a sequence: never reused.
"""

from django.db import migrations, models

# (table, WHEN condition for row updates or None for any change)
WATCHED = [
    ("capacity_gpumodel", None),
    ("capacity_site", None),
    ("capacity_offer", None),
    (
        "capacity_node",
        "OLD.status IS DISTINCT FROM NEW.status OR OLD.site_id IS DISTINCT FROM NEW.site_id "
        "OR OLD.gpu_model_id IS DISTINCT FROM NEW.gpu_model_id "
        "OR OLD.gpu_count IS DISTINCT FROM NEW.gpu_count",
    ),
    ("capacity_gpudevice", None),
    ("contracts_allocation", None),
    ("metering_poolavailability", None),
]

FUNCTION = """
CREATE SEQUENCE marketplace_inventory_version_seq;

CREATE FUNCTION marketplace_bump_inventory_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  -- Once per transaction: the flag is transaction-local (set_config(..., true)).
  IF current_setting('hashgrid.inventory_bumped', true) IS DISTINCT FROM 'on' THEN
    INSERT INTO marketplace_inventoryversion (id, version)
    VALUES (1, nextval('marketplace_inventory_version_seq'))
    ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version;
    PERFORM set_config('hashgrid.inventory_bumped', 'on', true);
  END IF;
  RETURN NULL;
END
$$;
"""


def _triggers(table: str, update_condition: str | None) -> str:
    name = f"{table}_inventory_version"
    statements = [
        f"CREATE CONSTRAINT TRIGGER {name}_write AFTER INSERT OR DELETE ON {table} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        "EXECUTE FUNCTION marketplace_bump_inventory_version();",
        f"CREATE CONSTRAINT TRIGGER {name}_update AFTER UPDATE ON {table} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        + (f"WHEN ({update_condition}) " if update_condition else "")
        + "EXECUTE FUNCTION marketplace_bump_inventory_version();",
        f"CREATE TRIGGER {name}_truncate AFTER TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION marketplace_bump_inventory_version();",
    ]
    return "\n".join(statements)


def _drop(table: str) -> str:
    name = f"{table}_inventory_version"
    return "\n".join(
        f"DROP TRIGGER IF EXISTS {name}_{kind} ON {table};"
        for kind in ("write", "update", "truncate")
    )


FORWARD = FUNCTION + "\n".join(_triggers(table, when) for table, when in WATCHED)
BACKWARD = (
    "\n".join(_drop(table) for table, _ in WATCHED)
    + "\nDROP FUNCTION IF EXISTS marketplace_bump_inventory_version();"
    + "\nDROP SEQUENCE IF EXISTS marketplace_inventory_version_seq;"
)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("capacity", "0002_seed_gpu_catalog"),
        ("contracts", "0002_default_sla_and_inference_catalog"),
        ("metering", "0003_pool_availability"),
    ]

    operations = [
        migrations.CreateModel(
            name="InventoryVersion",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                ("version", models.BigIntegerField()),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("id", 1)), name="inventoryversion_one_row"
                    )
                ],
            },
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
