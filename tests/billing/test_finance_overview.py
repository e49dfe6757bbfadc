"""Finance's overview in the admin (issue 16, point 12): each month's state, unpaid
invoices and their dunning stage, statements awaiting approval, payouts pending or
failed, the inference disagreements; reconciliation as a Celery task whose report is
kept; who may see it; a bounded number of queries."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import time_machine
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.test import Client
from django.urls import reverse

from billing import payments, tasks
from billing.invoices import draft_invoices
from billing.models import (
    ConnectAccount,
    Payout,
    PayoutStatus,
    ReconcileRun,
    ReconcileRunStatus,
    SettlementStatement,
    StatementStatus,
)
from billing.overview import finance_overview
from billing.reconcile_runs import reconcile_run_execute, reconcile_run_request
from tests.billing.conftest import finalized_invoice_for, save_card
from tests.billing.test_finance_admin import finance_user
from tests.factories import OrganizationFactory, UserFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
CHARGED_AT = datetime(2026, 11, 4, 6, tzinfo=UTC)
OCTOBER = date(2026, 10, 1)
SEPTEMBER = date(2026, 9, 1)


def _buyer(name: str):
    return OrganizationFactory(name=name, is_buyer=True, is_partner=False)


def _statement(partner, *, status: str, month: date = OCTOBER, balance: int = 0):
    return SettlementStatement.objects.create(
        partner=partner,
        month=month,
        currency="USD",
        status=status,
        earnings_minor=balance,
        balance_minor=balance,
        payout_minor=balance,
        approved_at=None if status == StatementStatus.DRAFT else NOW,
    )


@pytest.fixture
def scenario(localstripe, django_capture_on_commit_callbacks):
    """October closed: one paid ($123.45), one in dunning ($200.00, declined once), one
    finalized and not charged yet ($50.00); September: one draft. Two partners' statements
    (one draft, one approved) and payouts (one pending, one failed, one paid)."""
    paid_buyer, dunning_buyer, uncharged_buyer = (
        _buyer("Paid Buyer"),
        _buyer("Dunning Buyer"),
        _buyer("Uncharged Buyer"),
    )
    save_card(paid_buyer, localstripe)
    save_card(dunning_buyer, localstripe, number="4000000000000341")  # declines
    paid = finalized_invoice_for(paid_buyer, total_minor=12_345)
    dunning = finalized_invoice_for(dunning_buyer, total_minor=20_000)
    uncharged = finalized_invoice_for(uncharged_buyer, total_minor=5_000)
    with (
        django_capture_on_commit_callbacks(execute=True),
        time_machine.travel(CHARGED_AT, tick=False),
    ):
        payments.charge_invoice(invoice_id=paid.pk)
        payments.charge_invoice(invoice_id=dunning.pk)
    with time_machine.travel(datetime(2026, 10, 1, 1, tzinfo=UTC), tick=False):
        draft_invoices(month=SEPTEMBER, contract_ids=[uncharged.contract_id])

    andes = OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)
    rift = OrganizationFactory(name="Rift Valley Hash", is_buyer=False, is_partner=True)
    _statement(andes, status=StatementStatus.DRAFT, balance=98_765)
    accounts = {
        partner: ConnectAccount.objects.create(
            partner=partner, stripe_account_id=f"acct_{partner.pk}", transfers_active=True
        )
        for partner in (andes, rift)
    }
    for partner, month, status, amount in (
        (andes, SEPTEMBER, PayoutStatus.PENDING, 10_000),
        (rift, OCTOBER, PayoutStatus.FAILED, 20_000),
        (rift, SEPTEMBER, PayoutStatus.PAID, 30_000),
    ):
        statement = _statement(partner, status=StatementStatus.APPROVED, month=month)
        Payout.objects.create(
            statement=statement,
            partner=partner,
            connect_account=accounts[partner],
            amount_minor=amount,
            currency="USD",
            status=status,
            idempotency_key=f"payout-{statement.pk}",
            stripe_transfer_id=f"tr_{statement.pk}" if status == PayoutStatus.PAID else None,
            failure_message="Account cannot receive transfers"
            if status == PayoutStatus.FAILED
            else "",
        )
    return {"paid": paid, "dunning": dunning, "uncharged": uncharged}


def test_the_overview_figures_of_a_closed_month(scenario):
    overview = finance_overview(now=NOW)

    months = [
        (
            row.label,
            row.state,
            *(row.invoices, row.drafts, row.finalized, row.not_charged),
            *(row.paid, row.outstanding, row.totals),
        )
        for row in overview.months
    ]
    assert months == [
        ("2026-11", "open", 0, 0, 0, 0, 0, 0, []),
        ("2026-10", "finalized", 3, 0, 3, 1, 1, 2, ["$373.45"]),
        ("2026-09", "drafted", 1, 1, 0, 0, 0, 0, []),
        ("2026-08", "open", 0, 0, 0, 0, 0, 0, []),
        ("2026-07", "open", 0, 0, 0, 0, 0, 0, []),
        ("2026-06", "open", 0, 0, 0, 0, 0, 0, []),
    ]
    assert overview.unpaid_count == 2
    assert [(row.invoice.buyer.name, row.amount_due, row.stage) for row in overview.unpaid] == [
        (
            "Dunning Buyer",
            "$200.00",
            "Failed: attempt 1 of 4, next retry 2026-11-07 06:00 UTC",
        ),
        ("Uncharged Buyer", "$50.00", "Not charged yet"),
    ]
    assert overview.awaiting_approval_count == 1
    assert [(s.partner.name, s.balance_minor) for s in overview.awaiting_approval] == [
        ("Andes Hash", 98_765)
    ]
    assert overview.payouts_count == 2
    assert [(p.partner.name, p.status, p.amount_minor) for p in overview.payouts] == [
        ("Andes Hash", "pending", 10_000),
        ("Rift Valley Hash", "failed", 20_000),
    ]
    assert overview.disagreements == 0
    assert overview.runs == []


def test_charging_the_last_invoice_makes_the_month_charged(scenario, localstripe):
    save_card(scenario["uncharged"].buyer, localstripe)
    with time_machine.travel(CHARGED_AT, tick=False):
        payments.charge_invoice(invoice_id=scenario["uncharged"].pk)
    october = finance_overview(now=NOW).months[1]
    assert (october.state, october.paid, october.outstanding, october.not_charged) == (
        "charged",
        2,
        1,
        0,
    )


def test_the_page_shows_the_figures_in_a_bounded_number_of_queries(
    scenario, django_assert_max_num_queries, django_capture_on_commit_callbacks
):
    client = client_for(finance_user())
    url = reverse("finance-overview")
    with time_machine.travel(NOW, tick=False):
        response = client.get(url)
        assert response.status_code == 200
        page = response.content.decode()
        for text in (
            "Dunning Buyer",
            "Failed: attempt 1 of 4, next retry 2026-11-07 06:00 UTC",
            "$987.65",  # the draft statement's balance
            "Account cannot receive transfers",
            "0 node-hours",
            reverse("admin:metering_inferencedisagreementhour_changelist"),
        ):
            assert text in page
        # Each month links to its invoices in the admin's list, filtered.
        october_list = client.get(reverse("admin:billing_invoice_changelist") + "?month=2026-10-01")
        assert october_list.status_code == 200
        assert october_list.context["cl"].result_count == 3
        with django_assert_max_num_queries(20) as first:
            client.get(url)
        # Ten more unpaid invoices and statements cost no query more.
        for index in range(10):
            finalized_invoice_for(_buyer(f"More {index}"), total_minor=1_000 + index)
            _statement(
                OrganizationFactory(is_buyer=False, is_partner=True),
                status=StatementStatus.DRAFT,
            )
        with django_assert_max_num_queries(len(first.captured_queries)):
            assert client.get(url).status_code == 200


def test_who_may_open_the_overview():
    url = reverse("finance-overview")
    anonymous = Client()
    response = anonymous.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    buyer = client_for(UserFactory())  # not staff
    assert buyer.get(url).status_code == 302
    staff_without_finance = UserFactory(is_staff=True)
    TOTP.activate(staff_without_finance, generate_totp_secret())
    assert client_for(staff_without_finance).get(url).status_code == 403
    assert (
        client_for(staff_without_finance)
        .post(reverse("finance-reconcile-start"), {"month": "2026-10"})
        .status_code
        == 403
    )
    assert client_for(finance_user()).get(url).status_code == 200


def test_the_finance_index_opens_with_the_overview_and_hides_internals(staff_client):
    finance = client_for(finance_user())
    page = finance.get(reverse("admin:index")).content.decode()
    assert page.index(reverse("finance-overview")) < page.index("Invoices")
    app_labels = {
        app["app_label"] for app in finance.get(reverse("admin:index")).context["app_list"]
    }
    assert app_labels == {"accounts", "billing", "contracts", "metering"}
    # A superuser still sees the internals: hidden by permission, not removed.
    superuser_apps = {
        app["app_label"] for app in staff_client.get(reverse("admin:index")).context["app_list"]
    }
    assert {"django_celery_beat", "mfa"} <= superuser_apps


def test_reconcile_runs_as_a_task_and_keeps_its_report(
    localstripe, django_capture_on_commit_callbacks
):
    finalized_invoice_for(_buyer("Uncharged Buyer"), total_minor=5_000)
    finance = finance_user()
    client = client_for(finance)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post(
            reverse("finance-reconcile-start"), {"month": "2026-10", "include_stripe": ""}
        )
    run = ReconcileRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("finance-reconcile-run", args=[run.pk])
    assert len(queued) == 1  # the task is queued once the request commits
    assert (run.month, run.include_stripe, run.status, run.requested_by) == (
        OCTOBER,
        False,
        ReconcileRunStatus.QUEUED,
        finance,
    )
    page = client.get(reverse("finance-reconcile-run", args=[run.pk])).content.decode()
    assert "htmx" in page and 'id="reconcile-progress"' in page
    fragment = client.get(
        reverse("finance-reconcile-run", args=[run.pk]), headers={"HX-Request": "true"}
    ).content.decode()
    assert "<html" not in fragment
    assert 'hx-trigger="every 1s"' in fragment
    assert 'value="0"' in fragment

    assert tasks.run_reconcile(run.pk) == "clean"
    run.refresh_from_db()
    assert (run.status, run.steps_done, run.steps_total, run.difference_count) == (
        ReconcileRunStatus.CLEAN,
        9,
        9,
        0,
    )
    assert run.report.splitlines() == [
        "Reconciliation of 2026-10",
        "  ledger entries balance: 1 compared",
        "  invoices = ledger: 1 compared",
        "  payments = ledger = invoices: 0 compared",
        "  credit notes and refunds = ledger = invoices: 0 compared",
        "  receivables = amounts due: 1 compared",
        "  paid lines = partner shares + platform fees: 0 compared",
        "  statements = attributions = ledger: 0 compared",
        "  payouts = statements = ledger: 0 compared",
        "  partner payables = statements - payouts: 0 compared",
        "  stripe: skipped (not asked)",
        "No differences: ledger = invoices = payments = statements = payouts.",
    ]
    assert run.started_at is not None and run.finished_at is not None
    # A second delivery of the task finds the run claimed and changes nothing.
    assert tasks.run_reconcile(run.pk) is None
    fragment = client.get(
        reverse("finance-reconcile-run", args=[run.pk]), headers={"HX-Request": "true"}
    ).content.decode()
    assert "hx-trigger" not in fragment
    assert 'value="100"' in fragment
    assert "No differences" in fragment


def test_a_run_with_differences_keeps_each_of_them(scenario):
    """The scenario's statements and payouts were written straight to the table (no
    attribution, no ledger): the run finds exactly those four differences."""
    run = reconcile_run_request(month=OCTOBER, actor=None, include_stripe=False)
    done = reconcile_run_execute(run_id=run.pk)
    assert done is not None
    assert (done.status, done.difference_count, done.steps_done) == (
        ReconcileRunStatus.DIFFERENCES,
        4,
        9,
    )
    paid_number = scenario["paid"].number
    andes_october = SettlementStatement.objects.get(partner__name="Andes Hash", month=OCTOBER)
    rift_october = SettlementStatement.objects.get(partner__name="Rift Valley Hash", month=OCTOBER)
    assert done.report.splitlines()[-5:] == [
        "4 difference(s):",
        f"  - [attribution] paid invoice {paid_number}: expected attributions (it was paid "
        "before the statements were drafted), found nothing",
        f"  - [statements] statement {andes_october.reference} (Andes Hash): earnings: expected $0.00, "
        "found $987.65",
        f"  - [payouts = statements] payout of statement {rift_october.reference} (Rift Valley Hash): "
        "expected $0.00, found $200.00",
        f"  - [payables] partner #{rift_october.partner_id} payable (USD): expected $300.00, found $0.00",
    ]
    assert finance_overview(now=NOW).runs == [done]
