"""The finance admin: the Finance group's exact permissions, MFA, actions that call the
services and leave an audit trail, and what finance must not reach."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import time_machine
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from accounts.models import AuditEvent
from billing.models import (
    CreditNote,
    Invoice,
    PartnerAgreement,
    PaymentStatus,
    Payout,
    PayoutStatus,
    RevenueKind,
    SettlementStatement,
    StatementStatus,
)
from billing.settlement.agreements import agreement_create
from tests.billing.conftest import finalized_invoice_for, save_card
from tests.billing.settlement_builders import (
    close_october,
    ensure_finance_group,
    observe_available,
    onboard,
    reserve_eight_gpus,
)
from tests.factories import ContractFactory, NodeFactory, UserFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db

FINANCE_PERMISSIONS = {
    "billing.view_invoice",
    "billing.finalize_invoice",
    "billing.void_invoice",
    "billing.retry_payment_invoice",
    "billing.view_invoiceline",
    "billing.view_creditnote",
    "billing.add_creditnote",
    "billing.view_paymentattempt",
    "billing.view_billingcustomer",
    "billing.view_stripeevent",
    "billing.view_journalentry",
    "billing.view_journalline",
    "billing.view_partneragreement",
    "billing.add_partneragreement",
    "billing.view_settlementstatement",
    "billing.approve_settlementstatement",
    "billing.pay_settlementstatement",
    "billing.view_attribution",
    "billing.view_statementadjustment",
    "billing.view_connectaccount",
    "billing.view_payout",
    "billing.view_draftfailure",
    "billing.view_reconcilerun",
    "billing.add_reconcilerun",
    "contracts.view_contract",
    "accounts.view_organization",
    "accounts.view_auditevent",
    "metering.view_inferencedisagreementhour",
}


def finance_user(*, mfa: bool = True):
    user = UserFactory(is_staff=True)
    user.groups.add(ensure_finance_group())
    if mfa:
        TOTP.activate(user, generate_totp_secret())
    return user


@pytest.fixture
def finance():
    return finance_user()


@pytest.fixture
def finance_client(finance):
    return client_for(finance)


def _action(client, model: str, action: str, pks: list[int], **extra):
    return client.post(
        reverse(f"admin:billing_{model}_changelist"),
        {"action": action, "_selected_action": [str(pk) for pk in pks], **extra},
        follow=True,
    )


def test_the_finance_group_has_exactly_the_intended_permissions():
    group = ensure_finance_group()
    granted = {
        f"{p.content_type.app_label}.{p.codename}"
        for p in group.permissions.select_related("content_type")
    }
    assert granted == FINANCE_PERMISSIONS
    assert not any(name.startswith(("capacity.", "auth.")) for name in granted)
    assert not {"billing.change_journalentry", "billing.delete_journalline"} & granted


def test_migration_0008_lets_finance_read_draft_failures():
    """The period close records the contracts it could not draft (DraftFailure) for
    finance, but the Finance group could not open that list: 0008 grants its view."""
    from importlib import import_module

    from django.apps import apps
    from django.contrib.auth.models import Permission

    migration = import_module("billing.migrations.0008_finance_views_draft_failures")
    group = ensure_finance_group()
    view = Permission.objects.get(content_type__app_label="billing", codename="view_draftfailure")
    group.permissions.remove(view)
    migration.grant(apps, None)
    assert group.permissions.filter(pk=view.pk).exists()
    migration.revoke(apps, None)
    assert not group.permissions.filter(pk=view.pk).exists()
    migration.grant(apps, None)
    response = client_for(finance_user()).get(reverse("admin:billing_draftfailure_changelist"))
    assert response.status_code == 200


def test_a_finance_user_without_totp_cannot_reach_the_admin():
    client = client_for(finance_user(mfa=False))
    for url in ("/admin/", reverse("admin:billing_settlementstatement_changelist")):
        response = client.get(url)
        assert (response.status_code, response.url) == (302, reverse("mfa_activate_totp"))


@pytest.mark.parametrize(
    "model",
    [
        "invoice",
        "creditnote",
        "paymentattempt",
        "journalentry",
        "journalline",
        "partneragreement",
        "settlementstatement",
        "payout",
        "attribution",
        "connectaccount",
        "draftfailure",
    ],
)
def test_finance_changelists_render_with_search(finance_client, buyer_org, model):
    finalized_invoice_for(buyer_org)
    response = finance_client.get(reverse(f"admin:billing_{model}_changelist"), {"q": "acme"})
    assert response.status_code == 200


def test_finance_cannot_edit_the_ledger_or_read_agent_credentials(finance_client, buyer_org):
    invoice = finalized_invoice_for(buyer_org)
    entry = invoice.journal_entries.get()
    assert finance_client.get(reverse("admin:billing_journalentry_add")).status_code == 403
    change_url = reverse("admin:billing_journalentry_change", args=[entry.pk])
    assert finance_client.get(change_url).status_code == 200  # view only
    assert finance_client.post(change_url, {"memo": "edited"}).status_code == 403
    assert (
        finance_client.post(reverse("admin:billing_journalentry_delete", args=[entry.pk]))
    ).status_code == 403
    node = NodeFactory()
    for url in (
        reverse("admin:capacity_node_changelist"),
        reverse("admin:capacity_node_change", args=[node.pk]),
        reverse("admin:capacity_enrollmentcode_changelist"),
        reverse("admin:accounts_apikey_changelist"),
        reverse("admin:accounts_user_changelist"),
    ):
        assert finance_client.get(url).status_code == 403, url
    entry.refresh_from_db()
    assert entry.memo != "edited"


@pytest.fixture
def october_statement(buyer_org, partner_org, offer, devices, localstripe, connect_fake):
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
    )
    save_card(buyer_org, localstripe)
    close_october()
    onboard(partner_org, connect_fake)
    return SettlementStatement.objects.get()


def test_finance_approves_and_pays_and_the_partner_sees_the_payout(
    finance, finance_client, october_statement, partner_client, connect_fake
):
    statement = october_statement
    with time_machine.travel(datetime(2026, 11, 6, tzinfo=UTC), tick=True):
        response = _action(finance_client, "settlementstatement", "approve", [statement.pk])
        assert "Approved: 1." in response.content.decode()
        response = _action(finance_client, "settlementstatement", "pay", [statement.pk])
        assert "Paid: 1." in response.content.decode()
    statement.refresh_from_db()
    assert (statement.status, statement.approved_by) == (StatementStatus.PAID, finance)
    payout = Payout.objects.get()
    assert (payout.status, payout.amount_minor, payout.created_by) == (
        PayoutStatus.PAID,
        548_352,
        finance,
    )
    assert len(connect_fake.state.transfers) == 1
    actions = set(AuditEvent.objects.filter(actor=finance).values_list("action", flat=True))
    assert {
        "billing.statement_approved",
        "billing.payout_started",
        "billing.payout_paid",
    } <= actions
    assert LogEntry.objects.filter(user=finance, object_id=str(statement.pk)).count() == 2
    earnings = partner_client.get(reverse("billing:earnings")).content.decode()
    assert "$5,483.52" in earnings and "Paid" in earnings
    # Paying twice from the admin transfers nothing more.
    _action(finance_client, "settlementstatement", "pay", [statement.pk])
    assert len(connect_fake.state.transfers) == 1


def test_approving_out_of_order_is_refused_and_nothing_changes(finance_client, october_statement):
    statement = october_statement
    later = SettlementStatement.objects.create(
        partner=statement.partner, month=date(2026, 11, 1), currency="USD"
    )
    response = _action(finance_client, "settlementstatement", "approve", [later.pk])
    assert "Approve the partner&#x27;s earlier statements first." in response.content.decode()
    later.refresh_from_db()
    assert later.status == StatementStatus.DRAFT
    assert not AuditEvent.objects.filter(action="billing.statement_approved").exists()


def test_a_credit_form_submitted_twice_issues_one_credit_note(finance_client, buyer_org):
    """Issue 13 #8: finance double-clicks "Issue credit notes": one note, one refund."""
    invoice = finalized_invoice_for(buyer_org, total_minor=50_000)
    form = _action(finance_client, "invoice", "credit", [invoice.pk]).context["form"]
    key = form.initial["submission_key"]
    assert len(key) == 32
    submitted = {"apply": "1", "amount": "120.00", "reason": "Late start", "submission_key": key}
    for _ in range(2):
        _action(finance_client, "invoice", "credit", [invoice.pk], **submitted)
    note = CreditNote.objects.get()
    assert (note.amount_minor, note.submission_key) == (12_000, key)
    invoice.refresh_from_db()
    assert invoice.amount_credited_minor == 12_000
    assert AuditEvent.objects.filter(action="billing.credit_note_issued").count() == 1
    # A new render is a new form: it credits again.
    again = _action(finance_client, "invoice", "credit", [invoice.pk]).context["form"]
    assert again.initial["submission_key"] != key
    submitted["submission_key"] = again.initial["submission_key"]
    _action(finance_client, "invoice", "credit", [invoice.pk], **submitted)
    assert CreditNote.objects.count() == 2


def test_invoice_actions_credit_void_retry_and_finalize(finance, finance_client, buyer_org):
    invoice = finalized_invoice_for(buyer_org, total_minor=50_000)
    form = _action(finance_client, "invoice", "credit", [invoice.pk])
    assert "Issue credit notes" in form.content.decode()
    response = _action(
        finance_client,
        "invoice",
        "credit",
        [invoice.pk],
        apply="1",
        amount="120.00",
        reason="Late start",
    )
    assert "Credited: 1." in response.content.decode()
    note = CreditNote.objects.get()
    assert (note.amount_minor, note.created_by) == (12_000, finance)
    response = _action(finance_client, "invoice", "retry_payment", [invoice.pk])
    assert "Payment retried: 1." in response.content.decode()
    invoice.refresh_from_db()
    assert (invoice.payment_status, invoice.payment_attempt_count) == (PaymentStatus.FAILED, 1)
    response = _action(finance_client, "invoice", "void", [invoice.pk])
    assert "Voided: 1." in response.content.decode()
    invoice.refresh_from_db()
    assert (invoice.amount_credited_minor, invoice.payment_status) == (
        50_000,
        PaymentStatus.NOTHING_DUE,
    )
    actions = list(
        AuditEvent.objects.filter(actor=finance).order_by("pk").values_list("action", flat=True)
    )
    assert actions == [
        "billing.credit_note_issued",
        "billing.payment_retried",
        "billing.credit_note_issued",
        "billing.invoice_voided",
    ]
    draft_contract = ContractFactory(
        buyer=buyer_org,
        state="cancelled",
        starts_at=datetime(2026, 9, 1, tzinfo=UTC),
        activated_at=datetime(2026, 9, 1, tzinfo=UTC),
        ended_at=datetime(2026, 10, 20, tzinfo=UTC),
        monthly_commitment_minor=1_000,
    )
    from billing.invoices import draft_invoices

    with time_machine.travel(datetime(2026, 11, 5, tzinfo=UTC), tick=False):
        draft_invoices(month=date(2026, 10, 1), contract_ids=[draft_contract.pk])
        draft = Invoice.objects.get(contract=draft_contract)
        response = _action(finance_client, "invoice", "finalize", [draft.pk])
    assert "Finalized: 1." in response.content.decode()
    draft.refresh_from_db()
    assert draft.status == "finalized" and draft.number


def test_a_new_agreement_goes_through_the_service_and_supersedes_the_current(
    finance, finance_client, partner_org
):
    current = agreement_create(
        partner=partner_org,
        line_kind=RevenueKind.RESERVED,
        partner_share=Decimal("0.8000"),
        effective_from=date(2026, 1, 1),
        actor=None,
    )
    response = finance_client.post(
        reverse("admin:billing_partneragreement_add"),
        {
            "partner": partner_org.pk,
            "line_kind": RevenueKind.RESERVED,
            "partner_share": "0.8500",
            "effective_from": "2026-12-01",
            "note": "Volume tier",
        },
    )
    assert response.status_code == 302
    current.refresh_from_db()
    new = PartnerAgreement.objects.exclude(pk=current.pk).get()
    assert (current.effective_until, new.partner_share, new.created_by) == (
        date(2026, 12, 1),
        Decimal("0.8500"),
        finance,
    )
    assert AuditEvent.objects.get(action="billing.agreement_created", actor=finance)
    # Agreements are never edited in place.
    change = reverse("admin:billing_partneragreement_change", args=[new.pk])
    assert finance_client.post(change, {"partner_share": "0.99"}).status_code == 403
    # Starting before the current one ends is refused, and nothing is written.
    response = finance_client.post(
        reverse("admin:billing_partneragreement_add"),
        {
            "partner": partner_org.pk,
            "line_kind": RevenueKind.RESERVED,
            "partner_share": "0.9000",
            "effective_from": "2026-06-01",
        },
    )
    assert response.status_code == 200 and PartnerAgreement.objects.count() == 2


def test_money_shows_as_money_with_its_currency_and_human_labels(finance_client, buyer_org):
    invoice = finalized_invoice_for(buyer_org, total_minor=123_456)
    changelist = finance_client.get(reverse("admin:billing_invoice_changelist")).content.decode()
    assert ">Total</a>" in changelist
    assert "1,234.56 USD" in changelist
    assert "Total minor" not in changelist

    page = finance_client.get(reverse("admin:billing_invoice_change", args=[invoice.pk]))
    content = page.content.decode()
    assert page.status_code == 200
    assert "1,234.56 USD" in content
    assert " minor" not in content.replace("minor units", "")

    contract = invoice.contract
    contract_page = finance_client.get(
        reverse("admin:contracts_contract_change", args=[contract.pk])
    )
    text = contract_page.content.decode()
    assert contract_page.status_code == 200
    assert "Monthly commitment" in text and "Monthly commitment minor" not in text
    assert 'name="monthly_commitment_minor"' not in text  # shown, never editable
