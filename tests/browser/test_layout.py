"""The product layout in a real browser: landing on both viewports, mobile navigation."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from accounts.models import Role
from tests.browser.conftest import snap
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.browser


def _sign_in(page: Page, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill("correct-horse-battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()


def test_landing_on_desktop_and_phone(page: Page, mobile_page: Page) -> None:
    for current, step in ((page, "desktop"), (mobile_page, "mobile")):
        current.goto("/")
        expect(current.get_by_role("heading", level=1)).to_contain_text("GPU compute")
        expect(current.get_by_role("link", name="Reserve GPU capacity")).to_be_visible()
        expect(current.get_by_role("link", name="List your mining site")).to_be_visible()
        snap(current, step)
    # Nothing overflows sideways on a phone.
    assert mobile_page.evaluate("document.documentElement.scrollWidth") <= 390


def test_mobile_navigation_collapses_behind_a_toggle(mobile_page: Page, live_url: str) -> None:
    organization = OrganizationFactory(name="Rift Valley Hash", is_buyer=False, is_partner=True)
    user = MembershipFactory(organization=organization, role=Role.OWNER).user
    _sign_in(mobile_page, user.email)

    primary = mobile_page.get_by_role("navigation", name="Primary")
    toggle = mobile_page.get_by_role("button", name="Menu")
    expect(primary).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    snap(mobile_page, "closed")

    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(primary.get_by_role("link", name="Sites")).to_be_visible()
    expect(primary.get_by_role("link", name="Dashboard")).to_have_attribute("aria-current", "page")
    snap(mobile_page, "open")
    assert mobile_page.evaluate("document.documentElement.scrollWidth") <= 390


def test_pages_run_under_the_content_security_policy(page: Page) -> None:
    """The browser reports no violation of the policy, and what the pages need still runs:
    the nonce'd inline script, htmx and app.js (issue 13, item 10)."""
    organization = OrganizationFactory(name="Rift Valley Hash", is_buyer=True, is_partner=True)
    user = MembershipFactory(organization=organization, role=Role.OWNER).user
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(f"{page.url} {message.text[:80]}")
            if "Content Security Policy" in message.text
            else None
        ),
    )
    _sign_in(page, user.email)

    for path in ("/", "/dashboard/", "/organization/api-keys/", "/partner/nodes/new/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.documentElement.classList.contains('js')")
        assert page.evaluate("typeof window.htmx") == "object"
    page.goto("/organization/api-keys/")
    page.get_by_label("Name").fill("ci")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    page.goto("/api/docs/")
    expect(page.locator("#swagger-ui .swagger-ui").first).to_be_visible()

    assert violations == []
