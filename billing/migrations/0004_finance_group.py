"""The Finance group, with exactly the permissions the finance admin needs.

Finance reads invoices, payments, credit notes, the ledger, statements, payouts and the
audit trail; it finalizes, voids, credits and retries invoices, adds partner agreements,
approves statements and pays them. It cannot change or delete the ledger or invoices,
and it has no permission on capacity (nodes, enrollment codes: agents' credentials),
API keys or users.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Finance"
PERMISSIONS = {
    "billing": [
        "view_invoice",
        "finalize_invoice",
        "void_invoice",
        "retry_payment_invoice",
        "view_invoiceline",
        "view_creditnote",
        "add_creditnote",
        "view_paymentattempt",
        "view_billingcustomer",
        "view_stripeevent",
        "view_journalentry",
        "view_journalline",
        "view_partneragreement",
        "add_partneragreement",
        "view_settlementstatement",
        "approve_settlementstatement",
        "pay_settlementstatement",
        "view_attribution",
        "view_statementadjustment",
        "view_connectaccount",
        "view_payout",
    ],
    "contracts": ["view_contract"],
    "marketplace": ["view_organization", "view_auditevent"],
}


def create_group(apps, schema_editor):
    # Permissions are normally created after migrate; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    wanted = []
    for app_label, codenames in PERMISSIONS.items():
        found = list(
            Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames)
        )
        missing = set(codenames) - {permission.codename for permission in found}
        if missing:
            raise RuntimeError(f"permissions not found for {app_label}: {sorted(missing)}")
        wanted += found
    group.permissions.set(wanted)


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
