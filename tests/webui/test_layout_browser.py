"""Layout as a user sees it (issue 22, points 2 and 7): the Train tab's side panel keeps every block inside
itself and reachable in the viewport with every section open, at 1280×720 and 1440×1000; the default page
opens without warnings; the Sweep tab's trials table and field pickers are not cut."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.webui.browser import SHOTS, choose, open_page, rev, wait_new_estimate

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

# Each visible block of the side panel with its box, and the panel's own box.
BLOCKS_JS = """
() => {
  const sp = document.querySelector('#side-panel');
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const kids = [...sp.children].filter(k => k.getBoundingClientRect().height > 0);
  return {panel: box(sp), blocks: kids.map((k, i) => ({i, id: k.id || k.className.slice(0, 40), box: box(k)}))};
}
"""


@pytest.mark.parametrize("size", [(1280, 720), (1440, 1000)])
def test_side_panel_blocks_stay_inside_it_and_in_view(
    browser: Browser, ui_url: str, size: tuple[int, int]
) -> None:
    width, height = size
    page = open_page(browser, ui_url)
    page.set_viewport_size({"width": width, "height": height})
    # The most the panel shows: a config that does not fit (its fixes listed), every fold opened.
    before = rev(page)
    page.click("#preset-dev")
    wait_new_estimate(page, before)
    assert page.locator("#gpu-choice input").input_value().startswith("24 GB")
    page.locator("#rec-0").wait_for(state="visible", timeout=60_000)
    for title in ("Memory breakdown", "Timestep density"):
        head = page.locator("#side-panel .label-wrap").filter(has_text=title).first
        if not head.evaluate("e => e.classList.contains('open')"):
            head.click()
    page.locator("#estimate-breakdown").wait_for(state="visible")
    page.locator("#density-plot").wait_for(state="visible")
    page.evaluate("window.scrollTo(0, 400)")  # the form scrolled: the panel is stuck at the top
    layout = page.evaluate(BLOCKS_JS)
    left, top, right, bottom = layout["panel"]
    assert top >= 0 and bottom <= height + 1, layout["panel"]  # the panel itself fits the viewport
    for b in layout["blocks"]:
        x0, _, x1, _ = b["box"]
        assert x0 >= left - 1 and x1 <= right + 1, (
            f"{b['id']} is laid outside the panel: {b['box']} vs {layout['panel']}"
        )
    # Each block is reached by scrolling the panel, and then it is in the viewport.
    for b in layout["blocks"]:
        kid = page.locator("#side-panel > *").nth(b["i"])
        kid.evaluate("e => e.scrollIntoView({block: 'nearest'})")
        r = kid.bounding_box()
        assert r and r["y"] >= -1 and r["y"] + min(r["height"], height / 2) <= height + 1, (b["id"], r)
    head = page.locator("#side-panel .label-wrap").filter(has_text="Timestep density").first
    assert head.is_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"side_panel_{width}x{height}.png"))
    page.close()


def test_default_page_opens_without_warnings(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    page.locator("#dataset-check").get_by_text("usable").wait_for(timeout=60_000)
    assert page.locator("#estimate-warnings").get_attribute("data-count") == "0"
    assert "warning" not in page.locator("#dataset-check").inner_text()
    assert page.locator("#estimate-verdict").get_attribute("data-verdict") == "fits"
    page.close()


def test_sweep_table_and_field_pickers_are_not_cut(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    page.click("#tab-sweep-button")
    choose(page, "sweep-field-0", "training.gradient_accumulation_steps (int)")
    box = page.locator("#sweep-field-0 input")
    box.wait_for()
    # The whole name shows in the picker: its text is no wider than the box.
    assert box.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), box.input_value()
    table = page.locator("#sweep-table").bounding_box()
    vp = page.viewport_size
    assert table and table["x"] >= 0 and table["x"] + table["width"] <= vp["width"], table
    # Every column header of the trials table is inside the table's box.
    heads = page.locator("#sweep-table th:visible")
    assert heads.count() >= 7
    for i in range(heads.count()):
        h = heads.nth(i).bounding_box()
        assert h and h["x"] + h["width"] <= table["x"] + table["width"] + 1, (i, h, table)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "sweep_layout.png"))
    page.close()
