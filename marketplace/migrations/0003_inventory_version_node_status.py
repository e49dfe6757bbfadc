"""A node's status moves the inventory version only when search can see the change:
free GPUs count every node that is not retired, availability every node neither pending
nor retired. Health changes between online, degraded, unreachable, maintenance and
curtailed (metering, every few minutes somewhere in a fleet) no longer empty the search
cache. Enrolment (``enrolled_at``, the start of a node's availability) still does."""

from django.db import migrations

NODE_CONDITION = (
    "(OLD.status IN ('pending', 'retired')) IS DISTINCT FROM (NEW.status IN ('pending', 'retired')) "
    "OR (OLD.status = 'retired') IS DISTINCT FROM (NEW.status = 'retired') "
    "OR OLD.enrolled_at IS DISTINCT FROM NEW.enrolled_at "
    "OR OLD.site_id IS DISTINCT FROM NEW.site_id "
    "OR OLD.gpu_model_id IS DISTINCT FROM NEW.gpu_model_id "
    "OR OLD.gpu_count IS DISTINCT FROM NEW.gpu_count"
)
PREVIOUS_CONDITION = (
    "OLD.status IS DISTINCT FROM NEW.status OR OLD.site_id IS DISTINCT FROM NEW.site_id "
    "OR OLD.gpu_model_id IS DISTINCT FROM NEW.gpu_model_id "
    "OR OLD.gpu_count IS DISTINCT FROM NEW.gpu_count"
)


def _trigger(condition: str) -> str:
    return (
        "DROP TRIGGER IF EXISTS capacity_node_inventory_version_update ON capacity_node;\n"
        "CREATE CONSTRAINT TRIGGER capacity_node_inventory_version_update AFTER UPDATE "
        "ON capacity_node DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        f"WHEN ({condition}) EXECUTE FUNCTION marketplace_bump_inventory_version();"
    )


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0002_inventory_version")]

    operations = [migrations.RunSQL(_trigger(NODE_CONDITION), _trigger(PREVIOUS_CONDITION))]
