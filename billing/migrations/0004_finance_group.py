"""The Finance group (billing/reference_data.py says what it may do)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from billing.reference_data import GROUP, ensure_finance_group

# The group's permissions as this migration made them: models of later migrations have no
# permissions yet here (0008 adds the view of DraftFailure).
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
    "accounts": ["view_organization", "view_auditevent"],
}


def create_permissions_now(apps):
    """Permissions are normally created after migrate; make sure they exist now."""
    for app_config in apps.get_app_configs():
        stub = getattr(app_config, "models_module", None) is None  # migration state stubs
        if stub:
            app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        if stub:
            app_config.models_module = None


def create_group(apps, schema_editor):
    create_permissions_now(apps)
    ensure_finance_group(
        group_model=apps.get_model("auth", "Group"),
        permission_model=apps.get_model("auth", "Permission"),
        permissions=PERMISSIONS,
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
