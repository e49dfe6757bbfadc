"""The default SLA policy (the tiers of the product sheet) and a starter inference catalog.

Slugs match the ``workload.ref`` the reference agent reports for inference windows.
"""

from django.db import migrations

from contracts.reference_data import ensure_defaults


def create(apps, schema_editor):
    ensure_defaults(
        sla_policy=apps.get_model("contracts", "SlaPolicy"),
        sla_credit_tier=apps.get_model("contracts", "SlaCreditTier"),
        inference_product=apps.get_model("contracts", "InferenceProduct"),
    )


class Migration(migrations.Migration):
    dependencies = [("contracts", "0001_initial")]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
