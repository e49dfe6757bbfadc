"""Issue 16 as finance tries it (points 11, 12 and 14), in one browser tab: signing in
with a password and a TOTP code lands on the admin, whose index leads to the finance
overview (each month's state, unpaid invoices and their dunning stage, statements to
approve), a reconciliation started from the overview's form and followed to its kept
report, money labelled as money on an invoice, no internals on the index, the status
page.

Every page is captured at 1366 px and 375 px under ``<artifacts>/screenshots/finance/``
and fails when a main action overflows (tests/browser/layout.py).
"""

from __future__ import annotations

import re
from datetime import date

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.utils import timezone
from playwright.sync_api import Page, expect

from billing.models import Invoice, ReconcileRun, SettlementStatement
from config.celery import app as celery_app
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    devices,
    finalized_invoice_for,
    localstripe,
    offer,
    save_card,
    site,
    stripe_proxy,
    stripe_settings,
)
from tests.billing.settlement_builders import (
    close_october,
    ensure_finance_group,
    observe_available,
    reserve_eight_gpus,
)
from tests.browser.layout import check_layout
from tests.browser.test_settlement_journey import PASSWORD, _totp_code
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.browser

PERSONA = "finance"


def _check(page: Page, name: str) -> None:
    check_layout(page, persona=PERSONA, name=name)


@pytest.fixture
def books(buyer_org, offer, devices, localstripe):  # noqa: F811
    """October closed and charged (Acme Vision paid $6,854.40 by card; Andes Hash's
    statement drafted); September's invoice of Borealis Labs finalized, not charged."""
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
    )
    save_card(buyer_org, localstripe)
    close_october()
    borealis = OrganizationFactory(name="Borealis Labs", is_buyer=True)
    return finalized_invoice_for(borealis, total_minor=12_345, month=date(2026, 9, 1))


def test_finance_lands_on_the_admin_reads_the_overview_and_reconciles(
    page: Page,
    live_url: str,
    books,
    stripe_settings,  # noqa: F811
    monkeypatch,
) -> None:
    unpaid = books
    finance = UserFactory(email="fiona@hashgrid.example", is_staff=True)
    finance.groups.add(ensure_finance_group())
    secret = generate_totp_secret()
    TOTP.activate(finance, secret)
    page.set_viewport_size({"width": 1366, "height": 768})

    # -- point 11: a password and a code, then the admin (no organization asked for) -----
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(finance.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    _check(page, "sign-in")
    page.get_by_role("button", name="Sign in").click()
    page.locator("input[name=code]").fill(_totp_code(secret))
    _check(page, "sign-in-code")
    page.locator("input[name=code]").press("Enter")
    expect(page).to_have_url(f"{live_url}/admin/")

    # -- point 12: the index leads to the overview, without Celery or MFA internals ------
    expect(page.locator("#finance-overview-link")).to_be_visible()
    sections = page.locator("#content-main .module caption").all_inner_texts()
    assert not [name for name in sections if re.search(r"celery|periodic|mfa|result", name, re.I)]
    _check(page, "admin-index")
    page.locator("#finance-overview-link").get_by_role("link", name="Overview").click()

    months = {
        row.locator("td").nth(0).inner_text(): row.locator("td").nth(1).inner_text()
        for row in page.locator("#months tbody tr").all()
    }
    assert months["2026-09"] == "Finalized"  # numbered, not charged
    assert months["2026-10"] == "Charged"
    assert months[f"{timezone.now():%Y-%m}"] == "Open"
    expect(page.locator("#unpaid tbody tr td")).to_have_text(
        [unpaid.number, "Borealis Labs", "2026-09", "$123.45", "Not charged yet"]
    )
    statement = SettlementStatement.objects.get()
    expect(page.locator("#statements tbody tr td")).to_have_text(
        ["Andes Hash", "2026-10", "$5,483.52"]
    )
    _check(page, "overview")

    # -- point 12: reconcile from the overview; the run's page keeps its report ----------
    # No worker here: the task runs as the request commits (following a queued run's
    # progress by htmx is test_finance_overview_journey's).
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    page.get_by_label("Month (YYYY-MM)").fill("2026-10")
    page.get_by_label("Compare with Stripe's balance transactions").uncheck()
    page.get_by_role("button", name="Reconcile").click()
    run = ReconcileRun.objects.get()
    expect(page).to_have_url(f"{live_url}/admin/finance/reconcile/{run.pk}/")
    expect(page.locator("#reconcile-status")).to_have_text("No differences")
    expect(page.locator("#reconcile-progress")).to_have_attribute("value", "100")
    expect(page.locator("#reconcile-run")).to_contain_text(
        f"asked by {finance.email} · {run.created_at:%Y-%m-%d %H:%M} UTC · without Stripe"
    )
    expect(page.locator("#reconcile-report")).to_contain_text(
        "No differences: ledger = invoices = payments = statements = payouts."
    )
    _check(page, "reconcile-done")
    page.get_by_role("link", name="Back to the overview").click()
    expect(page.locator("#reconcile tbody tr td")).to_have_text(
        ["2026-10", "No differences", "0", finance.email, f"{run.created_at:%Y-%m-%d %H:%M}"]
    )

    # -- point 12: money as money --------------------------------------------------------
    paid = Invoice.objects.get(month=date(2026, 10, 1))
    page.goto(f"/admin/billing/invoice/{paid.pk}/change/")
    labels = page.locator("#content-main .form-row label").all_inner_texts()
    assert [label for label in labels if "minor" in label.lower()] == []
    total = page.locator(".form-row.field-total_money")
    expect(total).to_contain_text("6,854.40 USD")
    _check(page, "invoice-admin")
    page.goto("/admin/billing/settlementstatement/")
    expect(page.get_by_text(statement.reference)).to_be_visible()
    _check(page, "statements-admin")

    # -- point 14 -------------------------------------------------------------------------
    page.goto("/status/")
    expect(page.locator("[data-overall]")).to_have_text("All systems operational.")
    _check(page, "status")
