"""A real Chromium drives the page as a new user would (issue 12's Done-when).

The README's Train tab screenshot (docs/screenshots/train.png) is taken here; its monitor screenshot in
test_monitor_browser.py. Every wait is on
what the page shows (estimate revision, run state, element states), never on time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flux2_lora import runs
from tests.webui.browser import (
    SHOTS,
    choose,
    field,
    in_viewport,
    load_preset,
    open_page,
    rev,
    set_field,
    wait_new_estimate,
)

if TYPE_CHECKING:  # the test skips where these are not installed
    from playwright.sync_api import Browser, Page


pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
MAX_SHOT_BYTES = 300_000


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    assert path.stat().st_size < MAX_SHOT_BYTES, f"{name} is {path.stat().st_size} bytes"


def test_estimate_stays_in_view_while_the_last_field_is_edited(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    last = field(page, "logging.log_every")  # its section starts closed: field() opens it
    last.scroll_into_view_if_needed()
    before = rev(page)
    set_field(page, "logging.log_every", "5")
    wait_new_estimate(page, before)
    assert in_viewport(page, "#estimate-verdict") and in_viewport(page, "#start-btn")
    assert page.evaluate("window.scrollY") > 1500  # the form really scrolled away under the panel
    page.close()


def test_a_config_that_does_not_fit_shows_fixes_in_one_click(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    before = rev(page)
    page.click("#preset-dev")
    wait_new_estimate(page, before)
    before = rev(page)
    choose(page, "gpu-choice", "48 GB (RTX 6000 Ada, L40S, A6000)")
    wait_new_estimate(page, before)
    # An estimate started before the choice can land after it: wait for the one about the chosen GPU.
    page.wait_for_function(
        "() => document.querySelector('#estimate-verdict')?.innerText.includes('48 GB')", timeout=30_000
    )
    page.keyboard.press("Escape")  # no open dropdown in the screenshot
    page.locator("[role=listbox]").wait_for(state="hidden")
    assert page.locator("#estimate-verdict").get_attribute("data-verdict") == "does_not_fit"
    # The fixes follow once the estimate has settled; the ones for the earlier GPU may show until then.
    page.wait_for_function(
        "() => { const t = document.querySelector('#rec-0')?.innerText || '';"
        " return t.includes('fits') && !t.includes('does not fit') && !t.includes('8 GPUs'); }",
        timeout=30_000,
    )
    page.locator("#preset-message").get_by_text("Model family").wait_for()  # the preset said what it changed
    page.evaluate("window.scrollTo(0, 0)")
    _shot(page, "train.png")
    before = rev(page)
    page.click("#rec-0")
    wait_new_estimate(page, before)
    assert page.locator("#estimate-verdict").get_attribute("data-verdict") in ("fits", "tight")
    page.close()


def test_a_typed_value_is_what_runs_and_the_monitor_follows(
    browser: Browser, ui_url: str, ui_runs: Path
) -> None:
    page = open_page(browser, ui_url)
    page.click("#preset-quickstart")
    page.wait_for_function(
        "document.querySelector('#field-training-max_steps input').value === '200'", timeout=30_000
    )
    # A refused value shows its error at the widget and disables Start ...
    set_field(page, "training.max_steps", "0")
    page.locator("#field-training-max_steps").get_by_text("must be ≥ 1").wait_for()
    assert page.locator("#start-btn").is_disabled()
    assert "Max steps" in page.locator("#start-reason").inner_text()
    # ... and 20, below the old slider's minimum of 100, is taken as typed.
    set_field(page, "training.max_steps", "20")
    page.locator("#field-training-max_steps").get_by_text("must be ≥ 1").wait_for(state="detached")
    set_field(page, "validation.every_n_steps", "10")
    set_field(page, "logging.log_every", "1")
    set_field(page, "output.dir", "runs/browser-run")
    page.locator("#dataset-check").get_by_text("usable").wait_for(timeout=60_000)
    page.wait_for_function("!document.querySelector('#start-btn').disabled", timeout=30_000)
    page.click("#start-btn")
    # The monitor comes into view on its own.
    page.locator("#tab-runs-button[aria-selected=true]").wait_for(timeout=30_000)
    assert in_viewport(page, "#run-status-text")
    page.wait_for_selector("#run-status-text[data-state='finished']", timeout=600_000)
    assert page.locator("#run-status-text").get_attribute("data-step") == "20"
    run_dir = ui_runs / "browser-run"
    assert "max_steps: 20" in (run_dir / runs.CONFIG_FILE).read_text()
    page.wait_for_function(
        "document.querySelector('#runs-table').innerText.includes('browser-run')", timeout=30_000
    )
    page.locator("#samples img").first.wait_for(timeout=30_000)
    page.locator("#loss-plot canvas, #loss-plot svg").first.wait_for(timeout=30_000)
    # Samples enlarge on click.
    page.locator("#samples button img").first.click()
    page.locator("#samples .preview").first.wait_for(timeout=10_000)
    # The finished run's LoRA is in Test LoRA, with the run's own sampling settings and size.
    page.click("#tab-test-button")
    page.click("#test-lora input")
    page.locator('[role=option][aria-label="browser-run"]').click()
    page.wait_for_function("document.querySelector('#test-steps input').value === '8'", timeout=30_000)
    assert field_value(page, "#test-guidance") == "1" and field_value(page, "#test-resolution") == "64"
    assert field_value(page, "#test-prompt") == "a red circle on stripes, sks style"
    page.click("#generate-btn")
    img = page.locator("#test-image img")
    img.wait_for(timeout=300_000)
    page.locator("#test-message").get_by_text("64×64 px").wait_for()
    assert img.bounding_box()["width"] >= 256  # a 64 px image is shown enlarged, not as a thumbnail
    page.close()


def field_value(page: Page, selector: str) -> str:
    return str(page.locator(selector).locator("input, textarea").first.input_value())


def test_templates_survive_a_reload(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    page.get_by_text("Templates", exact=True).click()
    set_field(page, "lora.rank", "40")
    page.locator("#template-name").locator("input, textarea").first.fill("keep-me")
    page.click("#template-save")
    page.locator("#template-message").get_by_text("Saved template").wait_for()
    page.reload()
    page.wait_for_function("document.querySelector('#estimate-verdict')?.dataset.rev", timeout=60_000)
    page.get_by_text("Templates", exact=True).click()
    assert field(page, "lora.rank").input_value() != "40"
    choose(page, "template-pick", "keep-me")
    page.wait_for_function("document.querySelector('#field-lora-rank input').value === '40'", timeout=30_000)
    page.close()


def test_unknown_model_disables_start(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    choose(page, "field-model-variant", "auto")  # an explicit family would make any hub id a known shape
    set_field(page, "model.path", "nobody/unknown-model")
    page.wait_for_selector("#estimate-verdict[data-verdict='unknown']", timeout=30_000)
    assert page.locator("#start-btn").is_disabled() and page.locator("#preflight-btn").is_disabled()
    assert "unknown model" in page.locator("#start-reason").inner_text()
    set_field(page, "model.path", "black-forest-labs/FLUX.2-klein-base-4B")
    # Known again: estimated, and Start no longer held by the model (host RAM may hold it without a GPU).
    page.wait_for_selector("#estimate-verdict:not([data-verdict='unknown'])", timeout=30_000)
    page.wait_for_function(
        "() => !(document.querySelector('#start-reason')?.innerText || '').includes('unknown model')",
        timeout=30_000,
    )
    page.close()


def test_presets_say_what_they_change_and_alpha_follows_rank(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    page.click("#preset-low-vram")
    page.wait_for_function(
        "document.querySelector('#field-memory-quantization input').value === 'nf4'", timeout=30_000
    )
    page.locator("#preset-message").get_by_text("Quantization (frozen transformer)").wait_for()
    choose(page, "lora-preset", "Character")
    page.wait_for_function(
        "document.querySelector('#field-memory-quantization input').value === 'none'", timeout=30_000
    )
    page.locator("#preset-message").get_by_text("Preset Character").wait_for()
    assert field(page, "training.gradient_accumulation_steps").input_value() == "1"
    set_field(page, "lora.rank", "48")
    page.wait_for_function("document.querySelector('#field-lora-alpha input').value === '48'", timeout=30_000)
    set_field(page, "lora.alpha", "20")
    before = rev(page)
    set_field(page, "lora.rank", "64")
    wait_new_estimate(page, before)
    assert field(page, "lora.alpha").input_value() == "20"
    page.close()


def test_warnings_show_with_their_fix(browser: Browser, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    load_preset(page, "klein-4b")  # the demo (a new page) is spared the learning-rate warning
    set_field(page, "training.learning_rate", "0.0005")
    page.wait_for_selector("#estimate-warnings li[data-field='training.learning_rate']", timeout=30_000)
    page.locator("#side-panel button", has_text="Fix Learning rate").click()
    page.wait_for_function(
        "Number(document.querySelector('#field-training-learning_rate input').value) === 0.0001",
        timeout=30_000,
    )
    page.wait_for_selector("#estimate-warnings li[data-field='training.learning_rate']", state="detached")
    # float16 on a GPU that has bfloat16: the mixed precision shown beside the dtype follows it, and so
    # does the fix.
    choose(page, "field-model-dtype", "float16")
    page.wait_for_function(
        "document.querySelector('#mixed-precision input').value === 'fp16'", timeout=30_000
    )
    assert page.locator("#mixed-precision input").is_disabled()  # shown, never set
    page.wait_for_selector("#estimate-warnings li[data-field='model.dtype']", timeout=30_000)
    page.locator("#side-panel button", has_text="Fix Weight precision").click()
    page.wait_for_function(
        "document.querySelector('#mixed-precision input').value === 'bf16'", timeout=30_000
    )
    assert field(page, "model.dtype").input_value() == "bfloat16"
    page.close()
