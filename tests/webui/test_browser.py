"""A real Chromium drives the page: presets change fields and the estimate, a demo run reaches the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.webui.browser import field, launch_browser

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
SHOTS = Path(__file__).parent / "screenshots"


def test_preset_estimate_and_demo_run(ui_url: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(ui_url)
        verdict = page.locator("#estimate-verdict")
        verdict.wait_for(timeout=30_000)
        page.wait_for_function(
            "document.querySelector('#estimate-verdict').dataset.rev !== ''", timeout=30_000
        )
        rev0 = verdict.get_attribute("data-rev")
        steps = field(page, "training", "max_steps", "input[type=number]")
        assert steps.input_value() == "1000"
        page.screenshot(path=str(SHOTS / "01-loaded.png"), full_page=True)

        page.click("#preset-fast")
        page.wait_for_function(
            "document.querySelector('#field-training-max_steps input[type=number]').value === '800'",
            timeout=15_000,
        )
        page.wait_for_function(
            f"document.querySelector('#estimate-verdict').dataset.rev !== '{rev0}'", timeout=15_000
        )
        assert "Fast" in page.locator("#preset-message").inner_text()
        page.screenshot(path=str(SHOTS / "02-preset-fast.png"), full_page=True)

        page.click("#preset-quickstart")
        page.wait_for_function(
            "document.querySelector('#field-dataset-resolution input').value === '64'", timeout=15_000
        )
        out = (
            field(page, "output", "dir", "textarea")
            if page.locator("#field-output-dir textarea").count()
            else (field(page, "output", "dir"))
        )
        out.fill("runs/browser-run")
        out.press("Tab")
        page.locator("#dataset-check").get_by_text("usable").wait_for(timeout=30_000)
        page.click("#start-btn")
        page.wait_for_selector("#run-status-text[data-state='finished']", timeout=240_000)
        status = page.locator("#run-status-text")
        assert status.get_attribute("data-step") == "200"
        page.locator("#samples img").first.wait_for(timeout=20_000)
        page.wait_for_timeout(1500)  # let the plots draw for the screenshot
        page.screenshot(path=str(SHOTS / "03-run-finished.png"), full_page=True)
        browser.close()
