"""The Finance group (billing/reference_data.py says what it may do)."""

from django.db import migrations

from billing.reference_data import GROUP, ensure_finance_group


def create_group(apps, schema_editor):
    ensure_finance_group(apps)


def delete_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_settlement"),
        ("contracts", "0002_default_sla_and_inference_catalog"),
        ("marketplace", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, delete_group)]
