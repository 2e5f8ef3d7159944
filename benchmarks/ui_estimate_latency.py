"""Browser-measured latency from a field change to the estimate panel updating (target: median < 100 ms,
p95 < 200 ms on an idle 2-core machine), for a config that fits and one that does not.

Starts the UI on a free port (runs folder in a temp dir), opens it in Chromium, types N LoRA ranks and
times, inside the page, until #estimate-verdict shows a new revision. The does-not-fit case is FLUX.2
[dev] on a 24 GB GPU, where the fixes that make it fit are searched for after the verdict is shown.
With --aged it measures a page that has lived: after the fresh figures, it keeps training demo runs one
after another for --age seconds (default 600: ten minutes) while this page and a second tab follow each
in the Runs tab, then measures the same page again (issue 22's target: median < 100 ms, p95 < 200 ms).
Usage: python benchmarks/ui_estimate_latency.py [--n 40] [--aged [--age 600]]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.webui.browser import (  # noqa: E402
    MEASURE_JS,
    launch_browser,
    open_page,
    rev,
    set_field,
    wait_new_estimate,
)
from tests.webui.conftest import free_port, tiny_run_config  # noqa: E402

from flux2_lora.webui.app import launch  # noqa: E402

WARMUP = 3


@contextlib.contextmanager
def ui_in_browser() -> Iterator[tuple[str, Path, Any]]:
    """(url, runs folder, browser): the UI on a free port with its runs in a temp dir, and a Chromium to
    drive it; both closed after."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as runs:
        demo, url = launch(runs, port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            with sync_playwright() as p:
                browser = launch_browser(p)
                try:
                    yield url, Path(runs), browser
                finally:
                    browser.close()
        finally:
            demo.close()


def unlink_alpha(page: Any) -> None:
    """Alpha follows rank until edited: edit it once, so each rank change is exactly one estimate."""
    before = rev(page)
    alpha = float(page.locator("#field-lora-alpha input").input_value() or 0)
    set_field(page, "lora.alpha", f"{alpha + 1:g}")
    wait_new_estimate(page, before)


def measure(page, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    unlink_alpha(page)
    sel = "#field-lora-rank input"
    rank = int(float(page.locator(sel).input_value() or 0))
    times = []
    for i in range(n + WARMUP):
        # Always a new value (the same one would estimate nothing): the demo page opens at rank 8.
        rank = 8 + 4 * ((i + 1) % 20) if 8 + 4 * ((i + 1) % 20) != rank else rank + 4
        ms = page.evaluate(MEASURE_JS, [sel, str(rank)])
        if i >= WARMUP:  # the first few warm up the connection and caches
            times.append(ms)
        page.wait_for_timeout(50)  # a person types slower than this; keeps changes from coalescing
    return sorted(times)


TARGET_MEDIAN_MS, TARGET_P95_MS = 100.0, 200.0  # issue 22, point 4


CLICK_JS = """
async (sel) => {
  const before = document.querySelector('#estimate-verdict')?.dataset.rev;
  const t0 = performance.now();
  document.querySelector(sel).click();
  return await new Promise((resolve, reject) => {
    const check = () => {
      if (document.querySelector('#estimate-verdict')?.dataset.rev !== before) resolve(performance.now() - t0);
      else if (performance.now() - t0 > 30000) reject(new Error('estimate did not update'));
      else requestAnimationFrame(check);
    };
    check();
  });
}
"""


def measure_recommendation(page: Any) -> list[float]:
    """One click on the first fix of the page as it stands (FLUX.2 [dev] on 24 GB) until the estimate
    shows its result: the issue saw 2.8-4.5 s in an aged page. One: a fix applied stays applied (loading
    the model preset again keeps it), so a second click would time another config."""
    page.wait_for_selector("#estimate-verdict[data-verdict='does_not_fit']", timeout=30_000)
    page.locator("#rec-0").wait_for(state="visible", timeout=30_000)
    return [page.evaluate(CLICK_JS, "#rec-0 button, button#rec-0")]


def summary(name: str, times: list[float], target: bool = True) -> str:
    median = statistics.median(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    met = "meets" if median < TARGET_MEDIAN_MS and p95 < TARGET_P95_MS else "MISSES"
    return (
        f"{name:<44} median {median:6.1f} ms   p95 {p95:6.1f} ms   "
        f"min {times[0]:6.1f} ms   max {times[-1]:6.1f} ms   ({len(times)} changes"
        + (f"; {met} the target)" if target else ")")
    )


def follow(page: Any, name: str) -> None:
    """Open the run in the page's Runs tab by clicking its row of All runs, as a user would."""
    page.click("#tab-runs-button")
    page.click("#runs-refresh")
    row = page.locator("#runs-table").get_by_role("gridcell", name=name, exact=True).first
    row.wait_for(timeout=120_000)
    row.click()
    page.wait_for_function(f"document.querySelector('#run-pick input')?.value === {name!r}", timeout=60_000)


def wait_for_status(run_dir: Path, timeout_s: float = 900) -> None:
    """The trainer writes status.json once it has started (slow under load): the runs list shows it then."""
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "status.json").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{run_dir}: the trainer did not start within {timeout_s:.0f} s")
        time.sleep(0.2)


def age_pages(url: str, runs_root: Path, pages: list[Any], seconds: float) -> int:
    """Train demo runs back to back for ``seconds``, every page following each; returns the runs done."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    deadline, n = time.monotonic() + seconds, 0
    try:
        while time.monotonic() < deadline:
            name = f"aged-{n}"
            cfg = tiny_run_config(name, steps=200)
            cfg["validation"].update(every_n_steps=50)
            cfg["output"]["checkpoint_every"] = 100
            r = client.predict(cfg, "", api_name="/start_run")
            if not r.get("ok"):
                raise SystemExit(f"could not start a demo run: {r.get('errors')}")
            n += 1
            wait_for_status(runs_root / name)
            for page in pages:
                follow(page, name)
            left = max(1.0, deadline - time.monotonic())
            pages[0].wait_for_selector("#run-status-text[data-state='finished']", timeout=1000 * (left + 600))
    finally:
        if n:  # a run left going when this stops early: its trainer outlives the UI otherwise
            client.predict(str(runs_root / f"aged-{n - 1}"), 30.0, api_name="/stop_run")
    return n


class Lines(list[str]):
    """The figures, each printed as soon as it is measured (a later failure keeps the earlier ones)."""

    def append(self, line: str) -> None:
        if not self:
            load = os.getloadavg()
            print(
                f"estimate refresh in the browser (target: median < {TARGET_MEDIAN_MS:g} ms, "
                f"p95 < {TARGET_P95_MS:g} ms; {os.cpu_count()} CPUs, load "
                f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the first figure)",
                flush=True,
            )
        super().append(line)
        print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--aged", action="store_true", help="measure again after --age s of monitoring runs")
    ap.add_argument("--age", type=float, default=600.0, help="seconds of monitoring (default: 10 minutes)")
    args = ap.parse_args()
    if not args.aged:  # the aged runs need the demo model, cached in the user's own home
        os.environ.setdefault("FLUX2_LORA_HOME", tempfile.mkdtemp(prefix="flux2-home-"))
    lines = Lines()
    with ui_in_browser() as (url, runs, browser):
        page = open_page(browser, url)
        verdict = page.locator("#estimate-verdict").get_attribute("data-verdict")
        lines.append(summary(f"default page (demo) ({verdict})", measure(page, args.n)))
        if args.aged:
            second = open_page(browser, url)
            t0 = time.monotonic()
            done = age_pages(url, runs, [page, second], args.age)
            minutes = (time.monotonic() - t0) / 60
            page.click("#tab-train-button")
            lines.append(
                summary(f"aged {minutes:.1f} min, {done} runs, 2 tabs ({verdict})", measure(page, args.n))
            )
        before = rev(page)
        page.click("#preset-dev")
        wait_new_estimate(page, before)
        page.wait_for_selector("#estimate-verdict[data-verdict='does_not_fit']", timeout=30_000)
        page.locator("#rec-0").wait_for(state="visible", timeout=30_000)
        verdict = page.locator("#estimate-verdict").get_attribute("data-verdict")
        lines.append(summary(f"FLUX.2 [dev], 24 GB ({verdict})", measure(page, args.n)))
        lines.append(summary("a fix clicked, FLUX.2 [dev] on 24 GB", measure_recommendation(page), False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
