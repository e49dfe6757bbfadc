"""Finance's overview in a real browser: the admin index opens with it, and a
reconciliation's page follows the run by htmx polling until its report is there."""

from __future__ import annotations

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from playwright.sync_api import Page, expect

from billing import tasks
from billing.models import ReconcileRun
from billing.reconcile import CHECK_COUNT
from tests.billing.conftest import finalized_invoice_for
from tests.billing.settlement_builders import ensure_finance_group
from tests.browser.conftest import sign_in, snap
from tests.factories import OrganizationFactory, UserFactory

pytestmark = [pytest.mark.browser]


def test_finance_follows_a_reconciliation_from_the_overview(page: Page, live_url: str):
    invoice = finalized_invoice_for(
        OrganizationFactory(name="Paid Buyer", is_buyer=True, is_partner=False),
        total_minor=5_000,
    )
    finance = UserFactory(is_staff=True)
    finance.groups.add(ensure_finance_group())
    TOTP.activate(finance, generate_totp_secret())
    sign_in(page, finance, live_url)

    page.goto("/admin/")
    page.locator("#finance-overview-link").get_by_role("link", name="Overview").click()
    expect(page.locator("#unpaid")).to_contain_text("Paid Buyer")
    expect(page.locator("#unpaid")).to_contain_text("Not charged yet")
    snap(page, "01-overview")

    # A queued run, as the overview's form leaves it (no broker here: run it below).
    run = ReconcileRun.objects.create(
        month=invoice.month, include_stripe=False, steps_total=CHECK_COUNT, requested_by=finance
    )
    page.goto(f"/admin/finance/reconcile/{run.pk}/")
    expect(page.locator("#reconcile-status")).to_have_text("Queued")
    expect(page.locator("#reconcile-progress")).to_have_attribute("value", "0")
    tasks.run_reconcile(run.pk)  # what the worker does; the page polls every second
    expect(page.locator("#reconcile-status")).to_have_text("No differences", timeout=10_000)
    expect(page.locator("#reconcile-progress")).to_have_attribute("value", "100")
    expect(page.locator("#reconcile-report")).to_contain_text(
        "No differences: ledger = invoices = payments = statements = payouts."
    )
    snap(page, "02-reconciled")
