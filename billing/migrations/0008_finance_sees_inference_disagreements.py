"""Finance reads the inference disagreements per node and hour (metering 0008)."""

from importlib import import_module

from django.db import migrations

_finance_group = import_module("billing.migrations.0004_finance_group")


def grant(apps, schema_editor):
    _finance_group.ensure_group_with_permissions(apps, require_all=True)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_credit_note_submission_key"),
        ("metering", "0008_inference_usage_hours"),
    ]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
