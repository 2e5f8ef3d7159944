"""The Compare tab: through the API and in Chromium (two finished demo runs of different ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flux2_lora.training.trainer import run_training


@pytest.fixture(scope="module")
def compared_runs(ui_runs: Path) -> list[str]:
    from tests.conftest import tiny_config

    out = []
    for rank in (4, 8):
        config = tiny_config(
            ui_runs / f"cmp-rank{rank}",
            f"lora.rank={rank}",
            f"lora.alpha={rank}",
            "validation.enabled=true",
            "validation.every_n_steps=2",
            "validation.num_inference_steps=2",
            "validation.eval_images=2",
            "validation.eval_every=2",
        )
        assert run_training(config).finished
        out.append(str(Path(config.output.dir).resolve()))
    return out


def test_compare_runs_endpoint(client: Any, compared_runs: Any) -> None:
    r = client.predict(compared_runs, api_name="/compare_runs")
    assert r["ok"], r
    assert r["differing_fields"]["lora.rank"] == [4, 8]
    assert [Path(s["run"]).name for s in r["runs"]] == ["cmp-rank4", "cmp-rank8"]
    assert all(s["final_eval_loss"] is not None for s in r["runs"])
    assert Path(r["grid_file"]).is_file() and r["grid"]["rows"] == ["cmp-rank4", "cmp-rank8"]
    outside = client.predict([compared_runs[0], "/etc"], api_name="/compare_runs")
    assert not outside["ok"] and "/etc" in outside["message"]


@pytest.mark.browser
def test_compare_view_in_the_browser(browser: Any, ui_url: str, compared_runs: Any) -> None:
    from tests.webui.browser import open_page

    page = open_page(browser, ui_url)
    page.get_by_role("tab", name="Compare").click()
    pick = page.locator("#compare-pick input").first
    for name in ("cmp-rank4", "cmp-rank8"):
        pick.click()
        page.get_by_role("option", name=name, exact=False).first.click()
    page.locator("#compare-btn").click()
    page.wait_for_function(
        "() => document.querySelector('#compare-message')?.innerText.includes('2 runs compared')",
        timeout=60_000,
    )
    table = page.locator("#compare-table")
    assert "cmp-rank4" in table.inner_text() and "cmp-rank8" in table.inner_text()
    assert "lora.rank" in page.locator("#compare-diff").inner_text()
    page.locator("#compare-grid img").wait_for(state="visible", timeout=30_000)
    from tests.webui.browser import SHOTS as shots

    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
