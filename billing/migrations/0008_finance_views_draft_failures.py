"""Finance reads the contracts the period close could not draft (DraftFailure, 0006)."""

from importlib import import_module

from django.db import migrations

GROUP = "Finance"
CODENAME = "view_draftfailure"


def grant(apps, schema_editor):
    import_module("billing.migrations.0004_finance_group").create_permissions_now(apps)
    group, _ = apps.get_model("auth", "Group").objects.get_or_create(name=GROUP)
    permission = apps.get_model("auth", "Permission").objects.get(
        content_type__app_label="billing", codename=CODENAME
    )
    group.permissions.add(permission)


def revoke(apps, schema_editor):
    group = apps.get_model("auth", "Group").objects.filter(name=GROUP).first()
    if group is not None:
        group.permissions.remove(
            *apps.get_model("auth", "Permission").objects.filter(
                content_type__app_label="billing", codename=CODENAME
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_credit_note_submission_key"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
