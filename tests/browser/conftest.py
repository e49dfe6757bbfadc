"""Browser tests: Playwright driving Debian's Chromium against pytest-django's live server.

Run them with ``pytest -m browser`` (or ``pytest tests/browser``). Chromium must be at ``/usr/bin/chromium``
(``apt-get install chromium``); without it these tests fail rather than skip, so a CI
image that lost its browser cannot pass quietly.

Screenshots go under the artifacts directory: ``$HASHGRID_ARTIFACTS_DIR``, else
``artifacts/`` at the repository root (git ignores it). ``snap(page, "step")`` writes
``screenshots/<test>-<step>.png`` there, a failing test gets a ``<test>-failure.png``
automatically, and the persona tests keep every page at 1366 px and 375 px in
``screenshots/<persona>/`` (tests/browser/layout.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = Path(os.environ.get("HASHGRID_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = Path(os.environ.get("HASHGRID_ARTIFACTS_DIR") or ROOT / "artifacts").resolve()
SCREENSHOT_DIR = ARTIFACTS_DIR / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
MOBILE = {"width": 390, "height": 844}
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


def _current_test_name() -> str:
    # PYTEST_CURRENT_TEST = "tests/browser/test_x.py::test_y[param] (call)"
    current = os.environ.get("PYTEST_CURRENT_TEST", "unknown")
    name = current.split("::")[-1].split(" ")[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def snap(page: Page, name: str) -> Path:
    """Save a full-page screenshot of ``page`` as ``<test name>-<name>.png``."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{_current_test_name()}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="module")
def browser(django_db_setup: None) -> Iterator[Browser]:
    """One Chromium per test module.

    Playwright's sync API keeps an event loop in the test thread, and Django's ORM refuses
    to run beside one unless DJANGO_ALLOW_ASYNC_UNSAFE is set. The variable is set exactly
    while the browser lives: module scope ends it before the rest of the suite runs, so
    it never leaks into their subprocesses (``manage.py check --deploy`` rightly fails on
    it). The test database is created first (``django_db_setup``), outside the loop.
    """
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install it (apt-get install -y chromium) "
            "or point HASHGRID_CHROMIUM at it. Browser tests never skip.",
            pytrace=False,
        )
    previous = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop(ASYNC_UNSAFE, None)
        else:
            os.environ[ASYNC_UNSAFE] = previous


@pytest.fixture
def live_url(live_server) -> str:
    """The live server's base URL. Reference data (GPU catalog, SLA defaults…) survives the
    flush after each transactional test: config.reference_data re-creates it."""
    return str(live_server.url)


def _context(browser: Browser, live_url: str, viewport: dict[str, int]) -> BrowserContext:
    context = browser.new_context(base_url=live_url, viewport=viewport, locale="en-US")
    context.set_default_timeout(10_000)
    return context


@pytest.fixture
def context(live_url: str, browser: Browser) -> Iterator[BrowserContext]:
    context = _context(browser, live_url, DESKTOP)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        snap(page, "failure")


@pytest.fixture
def mobile_page(live_url: str, browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = _context(browser, live_url, MOBILE)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        snap(page, "failure-mobile")
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def sign_in(page: Page, user, live_url: str) -> None:  # type: ignore[no-untyped-def]
    """Sign ``user`` in by handing the browser a session cookie made by Django's client."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": live_url,
            }
        ]
    )
