"""Every persona page at 1366 px and 375 px: a screenshot kept as an artifact, and a layout
check that fails when the page's main actions overflow (issue 16, point 15).

``check_layout(page, persona="buyer", name="quote")`` resizes the page to each width in
turn, saves ``<artifacts>/screenshots/buyer/quote-1366.png`` and ``…-375.png``, and
checks two things at each width:

- the document does not scroll sideways (``document.scrollingElement.scrollWidth`` is
  within the viewport's width);
- every main action in ``<main>`` that is shown (buttons, submit inputs, links styled as
  buttons, the admin's object tools, anything marked ``data-main-action``) lies wholly
  inside the viewport's width, and no box that scrolls or clips sideways (a table's
  ``.table-wrap``) hides part of it: an action one has to scroll sideways to find is
  an overflowing action.

Both widths are captured before it fails, and it fails once, naming the page, the width
and the text of every offending element. The page is left at the width it had.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Page

from tests.browser.conftest import ARTIFACTS_DIR


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int


WIDTHS = (Viewport(1366, 768), Viewport(375, 812))

MAIN_ACTIONS = ", ".join(
    f"main {selector}"
    for selector in (
        "button",
        "input[type=submit]",
        "input[type=button]",
        "a.btn",
        "a.button",  # the admin's buttons
        ".object-tools a",  # the admin's actions above a list or form
        "[data-main-action]",
    )
)

# Returns one line per problem; run in the page with the selector of its main actions.
_FIND_OVERFLOW = """
(selector) => {
  const width = document.documentElement.clientWidth;
  const problems = [];
  const scrollWidth = document.scrollingElement.scrollWidth;
  if (scrollWidth > width) {
    problems.push(`the page scrolls sideways: ${scrollWidth} px wide in a ${width} px viewport`);
  }
  const describe = (element) => {
    const text = (element.innerText || element.value || element.getAttribute("aria-label")
                  || element.getAttribute("title") || "").replace(/\\s+/g, " ").trim();
    return `${element.tagName.toLowerCase()} "${text}"`;
  };
  const boxName = (box) => box.tagName.toLowerCase() + (box.className ? "." +
    String(box.className).trim().split(/\\s+/).join(".") : "");
  for (const element of document.querySelectorAll(selector)) {
    if (!element.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) continue;
    const mine = element.getBoundingClientRect();
    if (mine.width === 0 && mine.height === 0) continue;
    const left = Math.round(mine.left), right = Math.round(mine.right);
    let hidden = false;
    for (let box = element.parentElement; box && box !== document.body; box = box.parentElement) {
      const overflow = getComputedStyle(box).overflowX;
      if (overflow === "visible") continue;
      const edge = box.getBoundingClientRect();
      const shownLeft = edge.left + box.clientLeft, shownRight = shownLeft + box.clientWidth;
      if (mine.left < shownLeft - 0.5 || mine.right > shownRight + 0.5) {
        problems.push(`${describe(element)} spans ${left}..${right} px, hidden by the ` +
          `overflow-x: ${overflow} of ${boxName(box)} showing ` +
          `${Math.round(shownLeft)}..${Math.round(shownRight)} px`);
        hidden = true;
        break;
      }
    }
    if (!hidden && (left < 0 || right > width)) {
      problems.push(`${describe(element)} spans ${left}..${right} px, outside 0..${width}`);
    }
  }
  return problems;
}
"""

# Two frames after a resize: media queries applied, resize observers (charts) have run.
_SETTLED = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


class LayoutError(AssertionError):
    """A page's main actions overflow at one or more widths."""


def screenshot_path(persona: str, name: str, width: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    return ARTIFACTS_DIR / "screenshots" / persona / f"{slug}-{width}.png"


def overflowing_actions(page: Page) -> list[str]:
    """What overflows on ``page`` at its current width (empty when nothing does)."""
    page.evaluate("window.scrollTo(0, 0)")
    problems: list[str] = page.evaluate(_FIND_OVERFLOW, MAIN_ACTIONS)
    return problems


def check_layout(page: Page, *, persona: str, name: str) -> list[Path]:
    """Screenshot ``page`` at each width and check its main actions; returns the files."""
    original = page.viewport_size
    shots: list[Path] = []
    failures: list[str] = []
    try:
        for viewport in WIDTHS:
            page.set_viewport_size({"width": viewport.width, "height": viewport.height})
            page.evaluate(_SETTLED)
            path = screenshot_path(persona, name, viewport.width)
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
            shots.append(path)
            failures += [
                f"{name} at {viewport.width} px: {problem}" for problem in overflowing_actions(page)
            ]
    finally:
        if original is not None:
            page.set_viewport_size(original)
    if failures:
        raise LayoutError(
            f"{persona}: main actions overflow ({page.url}; screenshots "
            f"{', '.join(str(shot) for shot in shots)}):\n" + "\n".join(failures)
        )
    return shots
