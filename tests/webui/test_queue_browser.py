"""The queue and "Sample now" as a user sees them (issue 24): two demo runs queued from the Train tab run
one after the other in the Queue tab, and Sample now on a running run adds a sample at its current step
to the monitor's gallery. The README's queue and sample-now pictures are taken here.

Tests wait on what the page shows (#queue-state's data-states, the run status's data-step) and on files
the trainer writes, never on time; the sample-now run is held at a step (hooks.HOLD_ENV).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flux2_lora import runs
from flux2_lora.hooks import HOLD_ENV
from tests.helpers import wait_for
from tests.webui.browser import SHOTS, field, load_preset, open_page, rev, set_field, wait_new_estimate
from tests.webui.conftest import tiny_run_config

if TYPE_CHECKING:
    from gradio_client import Client
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

# Every value #queue-state's data-states takes, in order (the last two jobs are this test's).
RECORD_JS = """
() => {
  window.__queueStates = [];
  const rec = () => {
    const e = document.querySelector('#queue-state');
    if (!e) return;
    const s = e.dataset.states.split(',').slice(-2).join(',');
    const seen = window.__queueStates;
    if (seen[seen.length - 1] !== s) seen.push(s);
  };
  rec();
  new MutationObserver(rec).observe(document.querySelector('#queue-summary'),
    {subtree: true, childList: true, attributes: true, characterData: true});
}
"""
LAST_TWO = "document.querySelector('#queue-state')?.dataset.states.split(',').slice(-2).join(',') === {!r}"


@pytest.fixture(autouse=True)
def stop_queue() -> Iterator[None]:
    yield
    from flux2_lora.webui import ops

    ops.stop_runners(cancel=True)


def shot(page: Page, selector: str, name: str) -> None:
    """A README picture of one part of the page (small: a region, not the whole window)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(selector).screenshot(path=str(SHOTS / name))


def stacked(page: Page, top: tuple[str, str], below: str, name: str) -> None:
    """The region from top[0] to top[1] (status and buttons) above the ``below`` element (the gallery),
    as one picture: the plots between them are the monitor's own picture (monitor.png)."""
    from io import BytesIO

    from PIL import Image

    page.locator(top[0]).scroll_into_view_if_needed()
    a, b = (page.locator(s).bounding_box() for s in top)
    assert a and b
    clip: Any = {"x": a["x"], "y": a["y"], "width": a["width"], "height": b["y"] + b["height"] - a["y"]}
    upper = Image.open(BytesIO(page.screenshot(clip=clip)))
    lower = Image.open(BytesIO(page.locator(below).screenshot()))
    out = Image.new("RGB", (max(upper.width, lower.width), upper.height + lower.height), "white")
    out.paste(upper, (0, 0))
    out.paste(lower, (0, upper.height))
    SHOTS.mkdir(parents=True, exist_ok=True)
    out.save(SHOTS / name, optimize=True)


def test_two_queued_demo_runs_run_one_after_the_other(
    browser: Browser, ui_url: str, ui_runs: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each trainer (the queue runs in this process, its trainers inherit this) holds after its 2nd step
    # until released, so the page is seen with one running and the other waiting whatever the speed.
    monkeypatch.setenv(HOLD_ENV, "step@2")
    page = open_page(browser, ui_url)
    load_preset(page, "quickstart")
    set_field(page, "training.max_steps", "4")
    set_field(page, "training.warmup_steps", "0")
    names = ("queued-first", "queued-second")
    for name in names:
        before = rev(page)
        set_field(page, "output.dir", f"runs/{name}")
        wait_new_estimate(page, before)
        assert field(page, "output.dir").input_value() == f"runs/{name}"
        page.wait_for_function("!document.querySelector('#queue-add-btn').disabled", timeout=30_000)
        page.click("#queue-add-btn")
        page.locator("#action-message").get_by_text(name).wait_for(timeout=60_000)
    assert "Queued job" in page.locator("#action-message").inner_text()
    page.click("#tab-queue-button")
    # The tab lists its jobs once shown: until then its line says nothing of them (recording from there
    # read an empty list as this test's jobs; CI failed once so).
    page.wait_for_function(
        "(document.querySelector('#queue-state')?.dataset.states || '').split(',').length >= 2",
        timeout=60_000,
    )
    page.evaluate(RECORD_JS)
    # The first trains while the second waits.
    page.wait_for_function(LAST_TWO.format("running,queued"), timeout=300_000)
    table = page.locator("#queue-table")
    for name in names:
        table.get_by_role("gridcell", name=name, exact=True).first.wait_for(timeout=30_000)
    first_dir, second_dir = (ui_runs / n for n in names)
    assert wait_for((first_dir / ".held-step").exists, 300, 0.1)
    shot(page, "#tab-queue", "queue.png")
    assert not (second_dir / runs.STATUS_FILE).exists()  # the second has not started
    (first_dir / ".release-step").write_text("")
    page.wait_for_function(LAST_TWO.format("done,running"), timeout=300_000)
    assert wait_for((second_dir / ".held-step").exists, 300, 0.1)
    (second_dir / ".release-step").write_text("")
    page.wait_for_function(LAST_TWO.format("done,done"), timeout=300_000)
    seen = page.evaluate("window.__queueStates")
    assert all(s.count(",") == 1 for s in seen), seen  # the page never lost one of the two jobs
    assert "running,running" not in seen, seen
    assert all(s.split(",")[0] == "done" for s in seen if s.split(",")[1] == "running"), seen
    jobs = {j["name"]: j for j in client.predict(api_name="/queue_list")["jobs"]}
    first, second = (jobs[n] for n in names)
    assert second["started_at"] >= first["ended_at"]
    for name in names:
        s = client.predict(str(ui_runs / name), api_name="/run_status")
        assert s["state"] == "finished" and s["step"] == 4, s
    page.close()


def test_sample_now_adds_a_sample_at_the_current_step(
    browser: Browser, ui_url: str, ui_runs: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "sample-now-run"
    cfg = tiny_run_config(name, steps=2000)  # long: it is still training whenever the page looks
    cfg["validation"]["every_n_steps"] = 1000  # no scheduled sample near the asked one
    cfg["output"]["checkpoint_every"] = 0
    run_dir = ui_runs / name
    monkeypatch.setenv(HOLD_ENV, "step@3")  # the UI runs in this process: its trainer inherits this
    r = client.predict(cfg, "", False, "", api_name="/start_run")
    assert r["ok"], r
    monkeypatch.delenv(HOLD_ENV)
    assert wait_for((run_dir / ".held-step").exists, 300, 0.1)  # held after step 3, its status written
    page = open_page(browser, ui_url)
    page.click("#tab-runs-button")
    row = page.locator("#runs-table").get_by_role("gridcell", name=name, exact=True).first
    row.wait_for(timeout=30_000)
    row.click()
    page.wait_for_selector("#run-status-text[data-step='3']", timeout=60_000)
    page.wait_for_function("!document.querySelector('#sample-now-btn').disabled", timeout=30_000)
    assert not page.locator("#save-now-btn").is_disabled()
    before = page.locator("#samples img").count()
    assert not [s for s in runs.read_jsonl(run_dir / runs.SAMPLES_INDEX) if s.get("step") == 3]
    page.click("#sample-now-btn")
    page.locator("#runs-message").get_by_text("asked").wait_for(timeout=30_000)
    assert (run_dir / runs.ON_DEMAND["sample"]).is_file()  # what `flux2-lora ask RUN sample` writes
    (run_dir / ".release-step").write_text("")
    # The new sample lands in the gallery, made at the step the run was at.
    page.wait_for_function(f"document.querySelectorAll('#samples img').length > {before}", timeout=300_000)
    assert [s for s in runs.read_jsonl(run_dir / runs.SAMPLES_INDEX) if s.get("step") == 3]

    # The trainer acknowledges in its status after the sample is written: wait for that status.
    def acked() -> dict[str, Any]:
        return client.predict(r["run_dir"], api_name="/run_status")["extra"].get("on_demand", {})

    assert wait_for(lambda: "sample" in acked(), 120, 0.2)
    ack = acked()["sample"]
    assert ack["step"] == 3, ack
    stacked(page, ("#run-status", "#runs-message"), "#samples", "sample_now.png")
    page.click("#stop-btn")
    page.wait_for_selector("#run-status-text[data-state='stopped']", timeout=300_000)
    # Not running: both buttons disabled, with the reason beside them.
    page.wait_for_function("document.querySelector('#sample-now-btn').disabled", timeout=30_000)
    assert page.locator("#save-now-btn").is_disabled()
    assert "not running" in page.locator("#ask-reason").inner_text()
    page.close()
