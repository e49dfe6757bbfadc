"""A new buyer signs up, confirms their email, creates an organization and invites a colleague."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from playwright.sync_api import Page, expect

from tests.browser.conftest import snap

pytestmark = pytest.mark.browser

CONFIRM_LINK = re.compile(r"https?://\S+/accounts/confirm-email/[^/\s]+/")


def _confirmation_link(email: str) -> str:
    messages = [message for message in mail.outbox if email in message.to]
    assert messages, f"no email sent to {email}: {[m.subject for m in mail.outbox]}"
    match = CONFIRM_LINK.search(messages[-1].body)
    assert match, messages[-1].body
    return match.group(0)


def test_signup_to_dashboard_with_invited_member(page: Page, live_url: str) -> None:
    email = "giulia@acme-vision.example"
    password = "a-long-unusual-passphrase-42"

    page.goto("/")
    snap(page, "01-landing")
    page.get_by_role("link", name="Create account").first.click()

    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Password (again)").fill(password)
    snap(page, "02-signup")
    page.get_by_role("button", name="Create account").click()

    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    snap(page, "03-verification-sent")

    page.goto(_confirmation_link(email))
    expect(page.get_by_role("heading", name="Confirm Email Address")).to_be_visible()
    snap(page, "04-confirm-email")
    page.get_by_role("button", name="Confirm").click()

    if page.get_by_role("heading", name="Sign in to Hashgrid").is_visible():
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password", exact=True).fill(password)
        page.get_by_role("button", name="Sign in").click()

    # A new account has no organization yet: the dashboard sends it to create one.
    expect(page).to_have_url(re.compile(r"/organizations/new/$"))
    expect(page.get_by_role("heading", name="Create an organization")).to_be_visible()
    snap(page, "05-create-organization")
    page.get_by_label("Name").fill("Acme Vision Labs")
    buyer = page.get_by_label("Buyer")
    if not buyer.is_checked():
        buyer.check()
    page.get_by_role("button", name="Create organization").click()

    expect(page.get_by_role("heading", level=1, name="Acme Vision Labs")).to_be_visible()
    expect(page.locator(".messages")).to_contain_text("Acme Vision Labs is ready")
    snap(page, "06-dashboard-new-organization")

    page.get_by_role("navigation", name="Primary").get_by_role("link", name="Team").click()
    expect(page.get_by_role("heading", level=1, name="Members")).to_be_visible()
    invite = page.locator("section", has=page.get_by_role("heading", name="Invite someone"))
    invite.get_by_label("Email").fill("marco@acme-vision.example")
    invite.get_by_label("Role").select_option(label="Finance")
    invite.get_by_role("button", name="Send invitation").click()

    expect(page.locator(".messages")).to_contain_text(
        "Invitation sent to marco@acme-vision.example"
    )
    expect(page.get_by_role("cell", name="marco@acme-vision.example")).to_be_visible()
    snap(page, "07-members-invited")
    assert any("marco@acme-vision.example" in message.to for message in mail.outbox)

    page.get_by_role("navigation", name="Primary").get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", level=1, name="Acme Vision Labs")).to_be_visible()
    expect(page.locator(".org-chip")).to_contain_text("Acme Vision Labs")
    expect(
        page.get_by_role("navigation", name="Primary").get_by_role("link", name="Dashboard")
    ).to_have_attribute("aria-current", "page")
    snap(page, "08-dashboard")
