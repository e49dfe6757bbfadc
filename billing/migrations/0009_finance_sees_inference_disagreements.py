"""Finance reads the inference disagreements per node and hour (metering 0008's view)."""

from importlib import import_module

from django.db import migrations

GROUP = "Finance"
APP_LABEL, CODENAME = "metering", "view_inferencedisagreementhour"


def grant(apps, schema_editor):
    import_module("billing.migrations.0004_finance_group").create_permissions_now(apps)
    group, _ = apps.get_model("auth", "Group").objects.get_or_create(name=GROUP)
    permission = apps.get_model("auth", "Permission").objects.get(
        content_type__app_label=APP_LABEL, codename=CODENAME
    )
    group.permissions.add(permission)


def revoke(apps, schema_editor):
    group = apps.get_model("auth", "Group").objects.filter(name=GROUP).first()
    if group is not None:
        group.permissions.remove(
            *apps.get_model("auth", "Permission").objects.filter(
                content_type__app_label=APP_LABEL, codename=CODENAME
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0008_finance_views_draft_failures"),
        ("metering", "0008_inference_usage_hours"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
