"""Start in the Train tab follows the assessment (issue 19): disabled with its reason for what it calls an
error (a missing dataset, 0 usable images, adamw8bit without CUDA) and for a red verdict; enabled again
once fixed; "Start anyway" enables and starts a red verdict, never an error. Waits on the page's state."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.webui.browser import choose, load_preset, open_page, rev, set_field, wait_new_estimate

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

DISABLED_WITH = """
t => document.querySelector('#start-btn')?.disabled
  && (document.querySelector('#start-reason')?.innerText || '').includes(t)
"""
ENABLED = "() => !document.querySelector('#start-btn')?.disabled"


def _disabled_with(page: Page, text: str) -> None:
    page.wait_for_function(DISABLED_WITH, arg=text, timeout=30_000)
    assert page.locator("#preflight-btn").is_disabled()


def _enabled(page: Page) -> None:
    page.wait_for_function(ENABLED, timeout=30_000)


def _quickstart(browser: Browser, url: str) -> Page:
    page = open_page(browser, url)
    load_preset(page, "quickstart")
    _enabled(page)  # the demo fits and has no error: the starting point of every case
    return page


def test_start_is_disabled_for_a_missing_dataset_until_fixed(
    browser: Browser, ui_url: str, ui_data: Path
) -> None:
    page = _quickstart(browser, ui_url)
    set_field(page, "dataset.path", str(ui_data / "no-such-folder"))
    _disabled_with(page, "does not exist")
    assert "Dataset" in page.locator("#start-reason").inner_text()  # the field, as the form labels it
    page.locator("#start-anyway input").check()  # never overrides an error
    _disabled_with(page, "does not exist")
    set_field(page, "dataset.path", "demo")
    _enabled(page)
    page.close()


def test_start_is_disabled_for_a_folder_without_images(browser: Browser, ui_url: str, ui_data: Path) -> None:
    empty = ui_data / "no-images"
    empty.mkdir(exist_ok=True)
    (empty / "notes.txt").write_text("no images here")
    page = _quickstart(browser, ui_url)
    set_field(page, "dataset.path", str(empty))
    _disabled_with(page, "no usable images")
    (empty / "a.png").write_bytes(_png())
    set_field(page, "dataset.path", "demo")  # and back: the folder is checked again
    _enabled(page)
    set_field(page, "dataset.path", str(empty))
    page.locator("#dataset-check").get_by_text("1").first.wait_for()
    _enabled(page)
    page.close()


def test_start_is_disabled_for_adamw8bit_without_cuda(browser: Browser, ui_url: str) -> None:
    from flux2_lora.memory import local_gpu

    if local_gpu() is not None:
        pytest.skip("adamw8bit is an error only on a machine without a CUDA GPU")
    page = _quickstart(browser, ui_url)
    choose(page, "field-training-optimizer", "adamw8bit")
    _disabled_with(page, "adamw8bit")
    choose(page, "field-training-optimizer", "adamw")
    _enabled(page)
    page.close()


def test_a_red_verdict_disables_start_unless_started_anyway(
    browser: Browser, ui_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The trainer this test starts inherits the environment: offline, it ends at once instead of
    # downloading FLUX.2 [dev] (it is stopped at the end of the test either way).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    page = _quickstart(browser, ui_url)
    before = rev(page)
    page.click("#preset-dev")
    wait_new_estimate(page, before)
    choose(page, "gpu-choice", "24 GB (RTX 3090/4090, A10)")
    page.keyboard.press("Escape")
    page.wait_for_selector("#estimate-verdict[data-verdict='does_not_fit']", timeout=30_000)
    _disabled_with(page, "does not fit 24 GB")
    page.locator("#start-anyway input").check()
    _enabled(page)
    assert "Starting anyway" in page.locator("#start-reason").inner_text()
    page.click("#start-btn")
    page.locator("#tab-runs-button[aria-selected=true]").wait_for(timeout=30_000)  # the monitor, on its own
    assert "Started" in (page.locator("#action-message").text_content() or "")
    page.close()


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()
