"""The accounts models take their own names: tables, content types, audit labels.

- Tables: ``marketplace_*`` become ``accounts_*`` (``ALTER TABLE ... RENAME``: rows, ids,
  sequences, indexes and the foreign keys pointing at them stay as they are; the user's
  many-to-many tables are renamed with it).
- Content types: the rows of the moved models change their ``app_label``, keeping their
  ids, so every permission (the ``Finance`` group's ``view_organization`` and
  ``view_auditevent`` among them), user permission and admin log entry pointing at them
  stays as it is. Should ``accounts`` rows exist already (``post_migrate`` of a partial
  ``migrate`` made them before this ran), the old rows are merged into them: permissions
  and log entries move over, then the old rows go.
- Audit events: ``target_type`` holds the target's model label; ``marketplace.apikey``
  and the like become ``accounts.apikey``, so the admin's filter and any lookup by label
  find old and new events alike. Nothing else in an event changes.
"""

from django.db import migrations

MODELS = ("user", "organization", "membership", "invitation", "apikey", "auditevent")


def _move(apps, schema_editor, *, source: str, destination: str) -> None:
    database = schema_editor.connection.alias
    content_types = apps.get_model("contenttypes", "ContentType").objects.using(database)
    permissions = apps.get_model("auth", "Permission").objects.using(database)
    group_permissions = apps.get_model("auth", "Group").permissions.through.objects.using(database)
    user_model = apps.get_model("accounts", "User")
    user_permissions = user_model.user_permissions.through.objects.using(database)
    log_entries = apps.get_model("admin", "LogEntry").objects.using(database)
    events = apps.get_model("accounts", "AuditEvent").objects.using(database)
    for model in MODELS:
        events.filter(target_type=f"{source}.{model}").update(target_type=f"{destination}.{model}")
        old = content_types.filter(app_label=source, model=model).first()
        if old is None:
            continue
        new = content_types.filter(app_label=destination, model=model).first()
        if new is None:
            content_types.filter(pk=old.pk).update(app_label=destination)
            continue
        for permission in permissions.filter(content_type=old):
            twin = permissions.filter(content_type=new, codename=permission.codename).first()
            if twin is None:
                permissions.filter(pk=permission.pk).update(content_type=new)
                continue
            for links, owner in ((group_permissions, "group_id"), (user_permissions, "user_id")):
                holders = links.filter(permission=twin).values_list(owner, flat=True)
                links.filter(permission=permission).exclude(**{f"{owner}__in": holders}).update(
                    permission=twin
                )
                links.filter(permission=permission).delete()
            permissions.filter(pk=permission.pk).delete()
        log_entries.filter(content_type=old).update(content_type=new)
        content_types.filter(pk=old.pk).delete()


def forwards(apps, schema_editor):
    _move(apps, schema_editor, source="marketplace", destination="accounts")


def backwards(apps, schema_editor):
    _move(apps, schema_editor, source="accounts", destination="marketplace")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        *(migrations.AlterModelTable(name=model, table=None) for model in MODELS),
        migrations.RunPython(forwards, backwards),
    ]
