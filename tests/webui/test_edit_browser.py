"""Edit LoRAs in the browser (issue 20's "Done when"): a reference folder gives pair thumbnails, an edit
run starts from the page, its gallery shows reference | sample, and Test LoRA generates with a reference.

Every wait is on what the page shows (thumbnails, data-state, captions, the result image), never on time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flux2_lora import runs
from tests.webui.browser import SHOTS, choose, load_preset, open_page, set_field
from tests.webui.test_edit_ui import reference_folder_dataset

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
playwright = pytest.importorskip("playwright.sync_api")

THUMBS = "document.querySelectorAll('#dataset-pairs img').length"


def _text(page: Page, selector: str) -> str:
    return str(page.locator(selector).inner_text())


def test_reference_folder_pairs_edit_run_gallery_and_test_lora(
    browser: Browser, ui_url: str, ui_data: Path, ui_runs: Path
) -> None:
    page = open_page(browser, ui_url)
    # The edit demo's preset: its metadata.jsonl pairs show as thumbnails.
    load_preset(page, "quickstart-edit")
    page.wait_for_function(f"{THUMBS} > 0", timeout=60_000)
    assert "metadata.jsonl" in _text(page, "#dataset-pairs-info")

    # A reference folder of one's own: pairs by file stem, with counts and orphans.
    root = reference_folder_dataset(ui_data / "edit-browser-data")
    set_field(page, "dataset.path", str(root))
    set_field(page, "dataset.reference_path", "refs")
    page.wait_for_function(
        "document.querySelector('#dataset-pairs-info')?.innerText.includes('(folder')", timeout=60_000
    )
    page.wait_for_function(f"{THUMBS} === 5", timeout=60_000)
    info = _text(page, "#dataset-pairs-info")
    assert "5 pairs" in info and "nobody.png" in info and "t5.png" in info, info
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#section-dataset").screenshot(path=str(SHOTS / "edit-pairs.png"))

    # A short edit run: a few steps, samples every 2 steps with 2 denoising steps.
    for path, value in (
        ("training.max_steps", "4"),
        ("training.warmup_steps", "0"),
        ("validation.every_n_steps", "2"),
        ("validation.num_inference_steps", "2"),
        ("validation.eval_images", "0"),
        ("logging.log_every", "1"),
        ("output.dir", "runs/edit-browser"),
    ):
        set_field(page, path, value)
    page.wait_for_function(
        "document.querySelector('#field-output-dir input, #field-output-dir textarea').value"
        " === 'runs/edit-browser'",
        timeout=30_000,
    )
    page.wait_for_function("!document.querySelector('#start-btn').disabled", timeout=60_000)
    page.click("#start-btn")
    page.locator("#tab-runs-button[aria-selected=true]").wait_for(timeout=30_000)
    page.wait_for_selector("#run-status-text[data-state='finished']", timeout=600_000)
    run_dir = ui_runs / "edit-browser"
    assert "reference_path: refs" in (run_dir / runs.CONFIG_FILE).read_text()

    # The gallery shows each edit sample beside the image it edits.
    page.wait_for_function(
        "document.querySelector('#samples')?.innerText.includes('reference | sample')", timeout=60_000
    )
    page.locator("#samples img").first.wait_for(timeout=30_000)
    ratio = page.locator("#samples img").first.evaluate("i => i.naturalWidth / i.naturalHeight")
    assert ratio > 2, ratio  # reference | sample side by side, not the sample alone (square)
    page.locator("#samples").screenshot(path=str(SHOTS / "edit-gallery.png"))

    # Test LoRA: the run's reference is filled in; the result is an edit of it.
    page.click("#tab-test-button")
    choose(page, "test-lora", "edit-browser")
    refs = page.locator("#test-reference-path textarea")
    page.wait_for_function(
        "document.querySelector('#test-reference-path textarea').value.endsWith('refs/t0.png')",
        timeout=30_000,
    )
    assert Path(refs.input_value().strip()).is_file()
    page.click("#generate-btn")
    page.locator("#test-image img").wait_for(timeout=300_000)
    page.locator("#test-message").get_by_text("edit of 1 reference image").wait_for(timeout=30_000)
    page.close()
