"""The Finance group (billing/reference_data.py says what it may do)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from billing.reference_data import GROUP, ensure_finance_group


def create_group(apps, schema_editor):
    # Models of later migrations (metering 0008) get theirs from the later ones.
    ensure_group_with_permissions(apps, require_all=False)


def ensure_group_with_permissions(apps, *, require_all):
    # Permissions are normally created after migrate; make sure they exist now.
    for app_config in apps.get_app_configs():
        stub = getattr(app_config, "models_module", None) is None  # migration state stubs
        if stub:
            app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        if stub:
            app_config.models_module = None
    ensure_finance_group(
        group_model=apps.get_model("auth", "Group"),
        permission_model=apps.get_model("auth", "Permission"),
        require_all=require_all,
    )


def delete_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_settlement"),
        ("contracts", "0002_default_sla_and_inference_catalog"),
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, delete_group)]
