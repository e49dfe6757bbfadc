"""Finance's month in the admin: sign in with a password and a TOTP code, close October
(invoices drafted, finalized and charged; the partner's statement drafted), approve the
statement and pay it (a Stripe Connect transfer), and issue a credit note on the paid
invoice; the partner sees the payout."""

from __future__ import annotations

import re
import time

import pytest
from allauth.mfa.totp.internal.auth import TOTP, format_hotp_value, generate_totp_secret, hotp_value
from playwright.sync_api import Page, expect

from billing.models import (
    CreditNote,
    Invoice,
    PaymentStatus,
    Payout,
    PayoutStatus,
    SettlementStatement,
    StatementStatus,
)
from config.celery import app as celery_app
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    connect_fake,
    connect_settings,
    devices,
    localstripe,
    offer,
    save_card,
    site,
    stripe_proxy,
    stripe_settings,
)
from tests.billing.settlement_builders import (
    ensure_finance_group,
    observe_available,
    onboard,
    reserve_eight_gpus,
)
from tests.browser.conftest import sign_in, snap
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.calendar]
PASSWORD = "correct-horse-battery"


def _totp_code(secret: str) -> str:
    """The current code; waits out the last seconds of a 30 s period so it is still
    valid when the form is submitted."""
    if 30 - time.time() % 30 < 3:
        time.sleep(3)
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


def test_finance_closes_a_month_pays_a_statement_and_credits_an_invoice(
    page: Page,
    browser,
    live_url: str,
    buyer_org,
    partner_org,
    partner_owner,
    offer,  # noqa: F811 (fixtures imported above)
    devices,  # noqa: F811 (fixtures imported above)
    localstripe,  # noqa: F811 (fixtures imported above)
    connect_fake,  # noqa: F811 (fixtures imported above)
    monkeypatch,
):
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=line.starts_at.date(),
        until=line.ends_at.date(),
    )
    save_card(buyer_org, localstripe)
    onboard(partner_org, connect_fake)
    finance = UserFactory(email="fiona@hashgrid.example", is_staff=True)
    finance.groups.add(ensure_finance_group())
    secret = generate_totp_secret()
    TOTP.activate(finance, secret)

    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(finance.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    snap(page, "01-totp")
    page.locator("input[name=code]").fill(_totp_code(secret))
    page.locator("input[name=code]").press("Enter")
    expect(page).not_to_have_url(re.compile(r"/accounts/2fa/"))

    # -- close October from the invoice list -------------------------------------------------
    page.goto("/admin/billing/invoice/")
    page.get_by_role("link", name="Close a month").click()
    expect(page.get_by_role("heading", name="Close a month")).to_be_visible()
    page.locator("#id_month").fill("2026-10")
    page.get_by_label(re.compile("Draft, finalize and charge")).check()
    snap(page, "02-close-month")
    page.get_by_role("button", name="Close the month").click()
    expect(page.locator(".messagelist")).to_have_text(
        "Closed 2026-10: drafts created 1, updated 0, unchanged 0, already final 0. "
        "Finalized 1; charged 1, failed 0, deferred 0. Statements created 1."
    )
    invoice = Invoice.objects.get()
    # October's invoice is numbered in the year it was finalized (today, on this clock).
    number = f"HG-{invoice.finalized_at.year}-000001"
    assert (invoice.number, invoice.total_minor, invoice.payment_status) == (
        number,
        685_440,
        PaymentStatus.PAID,
    )
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text(number)
    snap(page, "03-closed")
    statement = SettlementStatement.objects.get()
    assert (statement.status, statement.payout_minor) == (StatementStatus.DRAFT, 548_352)

    # -- approve and pay the partner's statement ---------------------------------------------
    page.goto("/admin/billing/settlementstatement/")
    expect(page.get_by_text(statement.reference)).to_be_visible()
    snap(page, "04-statements")

    page.locator(f"input[name=_selected_action][value='{statement.pk}']").check()
    page.locator("select[name=action]").select_option("approve")
    page.get_by_role("button", name="Go").click()
    expect(page.get_by_text("Approved: 1.")).to_be_visible()
    page.locator(f"input[name=_selected_action][value='{statement.pk}']").check()
    page.locator("select[name=action]").select_option("pay")
    page.get_by_role("button", name="Go").click()
    expect(page.get_by_text("Paid: 1.")).to_be_visible()
    snap(page, "05-paid")
    statement.refresh_from_db()
    assert statement.status == StatementStatus.PAID
    assert Payout.objects.get().status == PayoutStatus.PAID

    # -- a credit note on the paid invoice (refunded to the buyer's card) ---------------------
    # The refund task is enqueued on commit; no broker here, so it runs in the server thread.
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    page.goto("/admin/billing/invoice/")
    page.locator(f"input[name=_selected_action][value='{invoice.pk}']").check()
    page.locator("select[name=action]").select_option("credit")
    page.get_by_role("button", name="Go").click()
    expect(page.get_by_text(f"Credit notes for 1 invoice: {number}.")).to_be_visible()
    page.get_by_label("Amount").fill("120.50")
    page.get_by_label("Reason").fill("Two GPUs throttled on 20 October")
    snap(page, "06-credit-form")
    page.get_by_role("button", name="Issue credit notes").click()
    expect(page.get_by_text("Credited: 1.")).to_be_visible()
    snap(page, "07-credited")
    note = CreditNote.objects.get()
    assert (note.invoice_id, note.amount_minor, note.reason, note.refund_status) == (
        invoice.pk,
        12_050,
        "Two GPUs throttled on 20 October",
        "succeeded",
    )

    partner_page = browser.new_context(base_url=live_url).new_page()
    sign_in(partner_page, partner_owner, live_url)
    partner_page.goto("/billing/earnings/")
    expect(partner_page.locator("[data-paid-out]")).to_have_text("$5,483.52")
    snap(partner_page, "08-partner-earnings")
    partner_page.get_by_role("link", name=statement.reference).click()
    expect(partner_page.locator("[data-payout]")).to_have_text("$5,483.52")
    paid_at = Payout.objects.get().paid_at
    expect(partner_page.get_by_text(f"transferred {paid_at:%Y-%m-%d}")).to_be_visible()
    snap(partner_page, "09-partner-statement")
    partner_page.context.close()
