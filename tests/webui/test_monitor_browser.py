"""The Runs tab as a user sees it (issue 22, points 1 and 3): numeric, titled plot axes drawn the right
way up, progress and ETA on every step, the log following its newest line, a row of All runs opening
its run, and Resume disabled once a run is finished. The README's monitor screenshot is taken here.

The trainer is held at a step (hooks.HOLD_ENV) so the test sees it mid-run whatever the machine's speed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flux2_lora import runs
from flux2_lora.hooks import HOLD_ENV
from tests.webui.browser import SHOTS, open_page
from tests.webui.conftest import tiny_run_config

if TYPE_CHECKING:
    from gradio_client import Client
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
PLOTS = ("loss", "lr", "memory", "eta")

# Every y-axis label of a plot's SVG (Vega renders each as <text transform="translate(x,y)">) as
# [value text, y in the SVG], and the line marks' points as [[x, y], ...] per series.
AXIS_JS = """
(id) => {
  const root = document.querySelector('#' + id);
  const yAxis = [...root.querySelectorAll('g.role-axis')].find(
    g => (g.getAttribute('aria-label') || '').startsWith('Y-axis'));
  const ticks = yAxis ? [...yAxis.querySelectorAll('g.role-axis-label text')].map(t => {
    const m = /translate\\(([-\\d.e]+),([-\\d.e]+)\\)/.exec(t.getAttribute('transform') || '');
    return [t.textContent, m ? parseFloat(m[2]) : null];
  }) : [];
  const lines = [...root.querySelectorAll('g.mark-line path')].map(p => {
    const pts = (p.getAttribute('d') || '').match(/[-\\d.e]+,[-\\d.e]+/g) || [];
    return pts.map(s => s.split(',').map(Number));
  });
  const title = root.querySelector('[data-testid=block-info]')?.textContent || '';
  return {axis: yAxis ? yAxis.getAttribute('aria-label') : '', ticks, lines, title};
}
"""


def plot_axes(page: Page, name: str) -> dict[str, Any]:
    return dict(page.evaluate(AXIS_JS, f"{name}-plot"))


def number(text: str) -> float:
    return float(text.replace("−", "-").replace(",", ""))


def assert_true_axis(page: Page, name: str) -> dict[str, Any]:
    """A linear (numeric) y scale whose tick values increase upwards, and a title."""
    a = plot_axes(page, name)
    assert "linear scale" in a["axis"], f"{name}: {a['axis']}"
    assert a["title"].strip(), f"{name} plot has no title"
    ticks = sorted(((number(t), y) for t, y in a["ticks"]), key=lambda p: -p[1])  # bottom first
    assert len(ticks) >= 2, f"{name}: {a['ticks']}"
    values = [v for v, _ in ticks]
    assert values == sorted(values) and values[0] < values[-1], f"{name} ticks bottom→top: {values}"
    return a


def wait_for_file(path: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def test_monitor_progress_plots_log_and_resume(
    browser: Browser, ui_url: str, ui_runs: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "monitor-run"
    cfg = tiny_run_config(name, steps=24)
    cfg["logging"]["log_every"] = 4  # progress must still move on every step
    cfg["validation"].update(every_n_steps=12)
    cfg["output"]["checkpoint_every"] = 12
    run_dir = ui_runs / name
    # The UI runs in this process: the trainer it starts inherits the hold (its 6th step).
    monkeypatch.setenv(HOLD_ENV, "step@6")
    page = open_page(browser, ui_url)
    r = client.predict(cfg, "", api_name="/start_run")
    assert r["ok"], r
    monkeypatch.delenv(HOLD_ENV)
    wait_for_file(run_dir / ".held-step")  # the trainer is at its 6th step, its status written
    page.click("#tab-runs-button")
    # Empty plots already say what they will show.
    for p in PLOTS:
        assert page.locator(f"#{p}-plot [data-testid=block-info]").inner_text().strip()
    # Nothing is followed in this page yet: the status says what there is instead of "no run yet".
    page.locator("#run-status-text").get_by_text("in the runs folder").wait_for(timeout=30_000)
    # A row of All runs opens its run.
    row = page.locator("#runs-table").get_by_role("gridcell", name=name, exact=True).first
    row.wait_for(timeout=30_000)
    row.click()
    page.wait_for_function(f"document.querySelector('#run-pick input')?.value === {name!r}", timeout=30_000)
    # Held after step 6 with a loss logged every 4 steps: the progress shows step 6, with an ETA.
    assert "step 4" not in page.locator("#run-status-text").inner_text()
    page.wait_for_selector("#run-status-text[data-step='6']", timeout=600_000)
    status = page.locator("#run-status-text").inner_text()
    assert "step 6/24" in status and "ETA" in status, status
    (run_dir / ".release-step").write_text("")
    page.wait_for_selector("#run-status-text[data-state='finished']", timeout=600_000)
    # Resume has nothing to train on a finished run.
    page.wait_for_function("document.querySelector('#resume-btn').disabled", timeout=30_000)
    assert "finished" in page.locator("#resume-btn").inner_text()

    # Every plot: a numeric y scale increasing upwards, a title.
    page.locator("#eta-plot g.mark-line path").first.wait_for(timeout=30_000)
    for p in PLOTS:
        assert_true_axis(page, p)
    # The loss line is drawn the way the logged losses go: a higher loss higher up (smaller SVG y).
    losses = [m["loss"] for m in runs.read_jsonl(run_dir / runs.METRICS_FILE)]
    assert len(losses) == 6
    lines = plot_axes(page, "loss")["lines"]
    line = next((ln for ln in lines if len(ln) == len(losses)), None)
    assert line, lines
    for i in range(len(losses)):
        for j in range(i + 1, len(losses)):
            if abs(losses[i] - losses[j]) > 1e-6:
                assert (losses[i] - losses[j]) * (line[i][1] - line[j][1]) < 0, (losses, line)
    # The ETA falls as the run goes: drawn falling (its last point lower than its first).
    eta = max(plot_axes(page, "eta")["lines"], key=len)
    assert eta[-1][1] > eta[0][1], eta

    # The log shows its newest line without scrolling (and has more lines than fit).
    box = page.evaluate(
        "() => { const b = document.querySelector('#log-tail'); const l = b.querySelector('.log-last');"
        " const r = b.getBoundingClientRect(), q = l.getBoundingClientRect();"
        " return {over: b.scrollHeight > b.clientHeight, inside: q.bottom <= r.bottom + 1 && q.top >= r.top,"
        " text: l.textContent, lines: b.querySelector('.log-text').dataset.lines}; }"
    )
    assert box["over"] and box["inside"], box
    assert box["text"] == runs.log_tail(run_dir, 40).splitlines()[-1]
    page.locator("#samples img").first.wait_for(timeout=30_000)
    # The README's picture: the status, then the plots.
    page.evaluate(
        "window.scrollTo(0, document.querySelector('#run-status').getBoundingClientRect().top"
        " + window.scrollY - 8)"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "monitor.png"))
    page.close()
