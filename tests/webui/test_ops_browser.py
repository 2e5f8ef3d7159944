"""Caption images in the Train tab's dataset section as a user sees it: disabled with its reason while the
captioning model cannot be loaded here, then run on the form's dataset folder with a tiny randomly
initialised Qwen2.5-VL (built from config), keeping the caption that was there."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.webui.browser import SHOTS, open_page, set_field

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")


def wait_caption_ready(page: Page) -> None:
    """Wait until Caption images is enabled; on a timeout, fail with what the reason line says (a failure in
    CI said only that the button stayed disabled)."""
    try:
        page.wait_for_function("!document.querySelector('#caption-btn').disabled", timeout=60_000)
    except playwright.TimeoutError:
        reason = page.locator("#caption-reason").inner_text()
        shown = page.locator("#caption-model").locator("input, textarea").first.input_value()
        pytest.fail(
            f"Caption images stayed disabled; the reason line says {reason!r}; the model box has {shown!r}"
        )


def test_caption_images_from_the_dataset_section(
    browser: Browser, ui_url: str, ui_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_captioning import build_tiny_vl_model

    model = build_tiny_vl_model(ui_data / "tiny-qwen-vl-page")
    ds = ui_data / "ds-page"
    ds.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48), (200, 30, 30)).save(ds / name)
    (ds / "b.txt").write_text("my own caption\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the UI runs in this process: the default is not cached
    page = open_page(browser, ui_url)
    set_field(page, "dataset.path", str(ds))
    check = page.locator("#dataset-check")
    check.get_by_text("1 missing").wait_for(timeout=60_000)
    page.locator("#caption-fold .label-wrap").first.click()
    box = page.locator("#caption-model").locator("input, textarea").first
    box.fill("nobody-here/no-such-captioner")
    box.press("Tab")
    page.locator("#caption-reason").get_by_text("HF_HUB_OFFLINE").wait_for(timeout=30_000)
    assert page.locator("#caption-btn").is_disabled()
    assert "disabled" in page.locator("#caption-reason").inner_text()
    box.fill(str(model))
    box.press("Tab")
    wait_caption_ready(page)
    page.click("#caption-btn")  # the default choice: existing captions are kept
    page.wait_for_selector("#caption-state[data-state='done']", timeout=600_000)
    shown = page.locator("#caption-state").inner_text()
    assert "1/1" in shown and "captions written: 1" in shown, shown
    assert (ds / "b.txt").read_text() == "my own caption\n"
    assert (ds / "a.txt").read_text().strip()
    check.get_by_text("0 missing").wait_for(timeout=60_000)  # the dataset check read the folder again
    page.close()


def test_edit_a_caption_in_the_previews_and_save_it(
    browser: Browser, ui_url: str, ui_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caption, open the previews, edit one caption, Save: the caption file on disk has the edited text,
    and the other image's caption is as the captioner wrote it."""
    from tests.test_captioning import build_tiny_vl_model

    model = build_tiny_vl_model(ui_data / "tiny-qwen-vl-preview")
    ds = ui_data / "ds-preview"
    ds.mkdir()
    for name, color in (("a.png", (200, 30, 30)), ("b.png", (30, 200, 30))):
        Image.new("RGB", (64, 48), color).save(ds / name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    page = open_page(browser, ui_url)
    set_field(page, "dataset.path", str(ds))
    page.locator("#dataset-check").get_by_text("2 missing").wait_for(timeout=60_000)  # the page has settled
    page.locator("#caption-fold .label-wrap").first.click()
    box = page.locator("#caption-model").locator("input, textarea").first
    box.fill(str(model))
    box.press("Tab")
    wait_caption_ready(page)
    page.click("#caption-btn")
    page.wait_for_selector("#caption-state[data-state='done']", timeout=600_000)
    written_b = (ds / "b.txt").read_text()
    page.click("#caption-preview-btn")
    page.locator("#caption-page").get_by_text("Page 1 of 1 · 2 images").wait_for(timeout=30_000)
    page.locator("#caption-thumb-0 img").wait_for(timeout=30_000)  # the thumbnail is shown
    edit = page.locator("#caption-edit-0 textarea")
    assert edit.input_value() == (ds / "a.txt").read_text().strip()
    assert page.locator("#caption-edit-1 textarea").input_value() == written_b.strip()
    assert not page.locator("#caption-edit-2").is_visible()  # a page of two images shows two boxes
    edit.fill("sks a red square, edited by hand")
    page.click("#caption-save-btn")
    page.locator("#caption-save-msg").get_by_text("saved 1 caption file(s): a.txt").wait_for(timeout=30_000)
    assert (ds / "a.txt").read_text() == "sks a red square, edited by hand\n"
    assert (ds / "b.txt").read_text() == written_b
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#caption-fold").screenshot(path=str(SHOTS / "caption_previews.png"))
    page.close()
