"""A deployment as it stood before ``accounts`` existed, built in the settings' database.

``python -m tests.accounts.branch_start`` (``test_migration_keeps_rows`` runs it in a
scratch database; migrations write through the default connection, so it needs a
process of its own):

1. migrates to the leaf migrations every app had at branch start (``BRANCH_START``) and
   runs what ``migrate`` runs after them (content types, permissions, reference data);
2. leaves the bookkeeping that day's code left: ``django_migrations`` knows
   ``marketplace.0001_initial`` and nothing of ``accounts``, the content types of the
   moved models say ``marketplace``;
3. writes rows into every table ``accounts`` took over, and rows of other apps pointing
   at them (an email address, a contract and its line's API key, a billing customer, an
   admin log entry, the Finance group and a user permission), through the historical
   models of that day.

Today's ``accounts.0001_initial`` replaces ``marketplace.0001_initial`` and creates the
same tables under the same names, so step 1 makes the schema that day's code made.
"""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal

import django

# The leaf migration of every project app when the accounts move started. Apps not named
# here (Django's, allauth, celery beat) are migrated to their leaves: the move changed none.
BRANCH_START = {
    "marketplace": "0003_inventory_version_node_status",
    "capacity": "0002_seed_gpu_catalog",
    "metering": "0004_attribution_cursor",
    "contracts": "0002_default_sla_and_inference_catalog",
    "billing": "0005_payment_attempt_payment_method",
}
MOVED_MODELS = ("user", "organization", "membership", "invitation", "apikey", "auditevent")


def migrate_to_branch_start():  # type: ignore[no-untyped-def]
    """Steps 1 and 2; returns the historical app registry of that day."""
    from django.core.management.sql import emit_post_migrate_signal
    from django.db import DEFAULT_DB_ALIAS, connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    targets = [
        (app, BRANCH_START.get(app, name))
        for app, name in executor.loader.graph.leaf_nodes()
        if app != "accounts"
    ]
    executor.migrate(targets)
    emit_post_migrate_signal(verbosity=0, interactive=False, db=DEFAULT_DB_ALIAS)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_migrations WHERE app = 'accounts'")
        cursor.execute(
            "UPDATE django_content_type SET app_label = 'marketplace' "
            "WHERE app_label = 'accounts' AND model = ANY(%s)",
            [list(MOVED_MODELS)],
        )
    return executor.loader.project_state(targets).apps


def fill(apps) -> None:  # type: ignore[no-untyped-def]
    """Step 3, with the models as they were (their tables are ``marketplace_*``)."""
    from django.utils import timezone

    model = apps.get_model
    now = timezone.now()
    owner = model("accounts", "User").objects.create(
        username="owner", email="owner@branch-start.test", password="md5$salt$hash"
    )
    staff = model("accounts", "User").objects.create(
        username="finance", email="finance@branch-start.test", password="!", is_staff=True
    )
    model("account", "EmailAddress").objects.create(
        user=owner, email=owner.email, verified=True, primary=True
    )
    organization = model("accounts", "Organization").objects.create(
        name="Branch Start", slug="branch-start", is_buyer=True, is_partner=True
    )
    for user, role in ((owner, "owner"), (staff, "finance")):
        model("accounts", "Membership").objects.create(
            user=user, organization=organization, role=role
        )
    model("accounts", "Invitation").objects.create(
        organization=organization,
        email="invited@branch-start.test",
        role="member",
        token_hash="1" * 64,
        invited_by=owner,
        expires_at=now + timedelta(days=7),
    )
    api_key = model("accounts", "ApiKey").objects.create(
        organization=organization,
        name="gateway",
        prefix="hg_branch",
        key_hash="2" * 64,
        created_by=owner,
    )
    model("accounts", "AuditEvent").objects.create(
        organization=organization,
        actor=owner,
        action="api_key.created",
        target_type="marketplace.apikey",
        target_id=str(api_key.pk),
        data={"name": "gateway"},
    )
    contract = model("contracts", "Contract").objects.create(
        buyer=organization, state="active", starts_at=now, term_ends_at=now + timedelta(days=30)
    )
    line = model("contracts", "ContractLine").objects.create(
        contract=contract,
        kind="inference",
        inference_product=model("contracts", "InferenceProduct").objects.order_by("pk").first(),
        input_price_per_million_tokens=Decimal("0.0500"),
        output_price_per_million_tokens=Decimal("0.0800"),
        starts_at=now,
    )
    model("contracts", "LineApiKey").objects.create(line=line, api_key=api_key)
    model("billing", "BillingCustomer").objects.create(
        organization=organization, stripe_customer_id="cus_branch_start"
    )
    staff.groups.add(model("auth", "Group").objects.get(name="Finance"))
    staff.user_permissions.add(
        model("auth", "Permission").objects.get(
            content_type__app_label="marketplace", codename="change_apikey"
        )
    )
    model("admin", "LogEntry").objects.create(
        user=staff,
        content_type=model("contenttypes", "ContentType").objects.get(
            app_label="marketplace", model="organization"
        ),
        object_id=str(organization.pk),
        object_repr=organization.name,
        action_flag=2,
        change_message="Renamed",
    )


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.test_settings")
    django.setup()
    fill(migrate_to_branch_start())
