"""The Sweep view and the Train tab's Auto-tune button in a real Chromium (issue 13's Done-when).

Waits are on what the page shows (data-trials, data-best, the table's text), never on time. The README's
docs/screenshots/sweep.png is taken here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.webui.browser import SHOTS, choose, field, open_page

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("optuna")
TINY = "training.max_steps=3\ntraining.warmup_steps=0\nvalidation.enabled=false\noutput.checkpoint_every=0\nlogging.tensorboard=false"


def box(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id}").locator("input, textarea").first


@pytest.mark.slow
def test_the_sweep_view_plans_launches_and_shows_trials_and_the_best(
    browser: Any, ui_url: str, ui_runs: Path
) -> None:
    page = open_page(browser, ui_url)
    page.click("#tab-sweep-button")
    box(page, "sweep-set").fill(TINY)
    choose(page, "sweep-field-0", "lora.rank (int)")
    values = box(page, "sweep-values-0")
    page.wait_for_function(
        "document.querySelector('#sweep-values-0 textarea, #sweep-values-0 input').value !== ''"
    )
    values.fill("4, 8")
    values.press("Tab")
    page.wait_for_selector("#sweep-plan-text[data-trials='2']", timeout=30_000)
    plan = page.locator("#sweep-plan-text").inner_text()
    assert "2 trials" in plan and "largest trial (lora.rank=" in plan and "GiB" in plan
    # A field the form cannot use is named in the plan, and nothing launches from it.
    values.fill("4, 0")
    values.press("Tab")
    page.wait_for_selector("#sweep-plan-text[data-verdict='error']", timeout=30_000)
    assert "lora.rank.values[1]" in page.locator("#sweep-plan-text").inner_text()
    values.fill("4, 8")
    values.press("Tab")
    page.wait_for_selector("#sweep-plan-text[data-trials='2']", timeout=30_000)
    name = box(page, "sweep-name")
    name.fill("browser-sweep")
    name.press("Tab")
    page.click("#sweep-start")
    page.locator("#sweep-message").get_by_text("Launched").wait_for(timeout=30_000)
    page.wait_for_function(
        "(document.querySelector('#sweep-table').innerText.match(/finished/g) || []).length === 2",
        timeout=600_000,
    )
    page.wait_for_function("document.querySelector('#sweep-best-text')?.dataset.best !== ''", timeout=60_000)
    best = page.locator("#sweep-best-text").inner_text()
    assert "best so far: trial" in best and "2/2 trials" in best
    assert (ui_runs / "browser-sweep" / "trial-0000" / "config.yaml").is_file()
    page.wait_for_function(
        "document.querySelector('#sweep-stop button, button#sweep-stop')?.disabled !== false"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert box(page, "sweep-name").input_value() == "browser-sweep"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "sweep.png"))
    page.close()


def test_autotune_applies_a_proposal_to_the_form_and_shows_why(browser: Any, ui_url: str) -> None:
    page = open_page(browser, ui_url)
    page.click("#preset-quickstart")  # the demo model and its dataset
    page.wait_for_function(
        "document.querySelector('#field-training-max_steps input').value === '200'", timeout=30_000
    )
    page.click("#autotune-btn")
    page.locator("#autotune-reasons").get_by_text("Auto-tuned: a style LoRA").wait_for(timeout=60_000)
    reasons = page.locator("#autotune-reasons").inner_text()
    assert "12 images × ~50 steps each" in reasons and "'sks' is in every caption" in reasons
    page.wait_for_function(
        "document.querySelector('#field-training-max_steps input').value === '600'", timeout=30_000
    )
    assert (
        field(page, "lora.rank").input_value() == "64"
        and field(page, "dataset.trigger_word").input_value() == "sks"
    )
    page.close()
