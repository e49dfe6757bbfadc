"""The Finance group, with exactly the permissions the finance admin needs.

Finance reads invoices, payments, credit notes, the ledger, statements, payouts, the
contracts the period close could not draft (``DraftFailure``) and the audit trail; it finalizes, voids, credits and retries invoices, adds partner agreements,
approves statements and pays them. It cannot change or delete the ledger or invoices,
and it has no permission on capacity (nodes, enrollment codes: agents' credentials),
API keys or users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
        "view_draftfailure",
        # Reconciliations run from the overview, with their reports (migration 0010).
        "view_reconcilerun",
        "add_reconcilerun",
    ],
    "contracts": ["view_contract"],
    "accounts": ["view_organization", "view_auditevent"],
    # Per node and hour where the gateway's and the agents' token counts differ.
    "metering": ["view_inferencedisagreementhour"],
}


def ensure_finance_group(
    *,
    group_model: Any,
    permission_model: Any,
    permissions: Mapping[str, Sequence[str]] = PERMISSIONS,
) -> None:
    """Reference data of billing (see config.reference_data): the Finance group, with
    exactly ``permissions`` (``PERMISSIONS``; a data migration passes the list as it was
    then, since later models' permissions do not exist yet). Takes the ``auth`` models
    ``Group`` and ``Permission``; the permissions must exist (``post_migrate`` creates
    them before this runs, the data migrations create them first)."""
    group, _ = group_model.objects.get_or_create(name=GROUP)
    wanted = []
    for app_label, codenames in permissions.items():
        found = list(
            permission_model.objects.filter(
                content_type__app_label=app_label, codename__in=codenames
            )
        )
        missing = set(codenames) - {permission.codename for permission in found}
        if missing:
            raise RuntimeError(f"permissions not found for {app_label}: {sorted(missing)}")
        wanted += found
    group.permissions.set(wanted)
