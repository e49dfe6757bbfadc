"""The layout check the persona tests run on every page (tests/browser/layout.py) fails
when it should: a main action pushed out by a too-wide element, or hidden behind a
sideways-scrolling box; and passes a page that fits."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.layout import LayoutError, check_layout, screenshot_path

pytestmark = pytest.mark.browser

FITS = """<!doctype html><html><head><meta name="viewport" content="width=device-width">
<style>body { margin: 0; font: 16px sans-serif; } .row { display: flex; flex-wrap: wrap; gap: 8px; }</style>
</head><body><main><h1>Offers</h1><div class="row">
<a class="btn" href="#">Edit</a><button type="button">Deactivate</button>
<input type="submit" value="Save"></div></main></body></html>"""


@pytest.fixture
def bare_page(browser: Browser) -> Iterator[Page]:
    """A page without a server: each test sets its content."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def test_a_page_that_fits_passes_and_is_captured_at_both_widths(bare_page: Page) -> None:
    bare_page.set_content(FITS)
    shots = check_layout(bare_page, persona="layout-check", name="fits")
    assert shots == [
        screenshot_path("layout-check", "fits", 1366),
        screenshot_path("layout-check", "fits", 375),
    ]
    assert all(shot.stat().st_size > 0 for shot in shots)
    assert bare_page.viewport_size == {"width": 1280, "height": 900}  # left as it was


def test_an_action_pushed_out_by_a_wide_element_fails(bare_page: Page) -> None:
    """A 900 px wide block fits at 1366 px; at 375 px its button leaves the viewport and
    the document scrolls sideways: both said, with the page, the width and the text."""
    bare_page.set_content(
        FITS.replace(
            '<div class="row">',
            '<div style="width: 900px"><span style="display: inline-block; width: 700px">'
            'Wide cell</span><button type="button">Remove offer</button></div><div class="row">',
        )
    )
    with pytest.raises(LayoutError) as failure:
        check_layout(bare_page, persona="layout-check", name="wide-block")
    problems = str(failure.value).splitlines()[1:]
    assert problems[0] == (
        "wide-block at 375 px: the page scrolls sideways: 900 px wide in a 375 px viewport"
    )
    assert len(problems) == 2
    spans = re.fullmatch(
        r'wide-block at 375 px: button "Remove offer" spans 700\.\.(\d+) px, outside 0\.\.375',
        problems[1],
    )
    assert spans is not None, problems[1]
    assert int(spans.group(1)) > 700
    assert screenshot_path("layout-check", "wide-block", 375).exists()


def test_an_action_behind_a_sideways_scroll_fails(bare_page: Page) -> None:
    """The page itself fits, but the table's wrapper scrolls: its last column's action is
    out of sight until one scrolls the table, so it overflows."""
    bare_page.set_content(
        FITS.replace(
            '<div class="row">',
            '<div class="table-wrap" style="overflow-x: auto"><table style="width: 600px">'
            '<tr><td style="width: 540px">Permian Flare 1</td>'
            '<td><a class="btn" href="#">Deactivate</a></td></tr></table></div><div class="row">',
        )
    )
    with pytest.raises(LayoutError) as failure:
        check_layout(bare_page, persona="layout-check", name="scrolled-table")
    problems = str(failure.value).splitlines()[1:]
    assert len(problems) == 1
    assert re.fullmatch(
        r'scrolled-table at 375 px: a "Deactivate" spans \d+\.\.\d+ px, hidden by the '
        r"overflow-x: auto of div\.table-wrap showing 0\.\.375 px",
        problems[0],
    ), problems[0]
