"""Browser-measured latency from a field change to the estimate panel updating (target: median < 100 ms,
p95 < 200 ms on an idle 2-core machine), for a config that fits and one that does not.

Starts the UI on a free port (runs folder in a temp dir), opens it in Chromium, types N LoRA ranks and
times, inside the page, until #estimate-verdict shows a new revision. The does-not-fit case is FLUX.2
[dev] on a 24 GB GPU, where the fixes that make it fit are searched for after the verdict is shown.
Usage: python benchmarks/ui_estimate_latency.py [--n 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

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
from tests.webui.conftest import free_port  # noqa: E402

from flux2_lora.webui.app import launch  # noqa: E402

WARMUP = 3


def measure(page, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    # Alpha follows rank until edited: edit it once, so each rank change is exactly one estimate.
    before = rev(page)
    alpha = float(page.locator("#field-lora-alpha input").input_value() or 0)
    set_field(page, "lora.alpha", f"{alpha + 1:g}")
    wait_new_estimate(page, before)
    sel = "#field-lora-rank input"
    times = []
    for i in range(n + WARMUP):
        ms = page.evaluate(MEASURE_JS, [sel, str(8 + 4 * (i % 20))])
        if i >= WARMUP:  # the first few warm up the connection and caches
            times.append(ms)
        page.wait_for_timeout(50)  # a person types slower than this; keeps changes from coalescing
    return sorted(times)


def summary(name: str, times: list[float]) -> str:
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return (
        f"{name:<34} median {statistics.median(times):6.1f} ms   p95 {p95:6.1f} ms   "
        f"min {times[0]:6.1f} ms   max {times[-1]:6.1f} ms   ({len(times)} changes)"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("FLUX2_LORA_HOME", tempfile.mkdtemp(prefix="flux2-home-"))
    lines = []
    with tempfile.TemporaryDirectory() as runs:
        demo, url = launch(runs, port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            with sync_playwright() as p:
                browser = launch_browser(p)
                page = open_page(browser, url)
                verdict = page.locator("#estimate-verdict").get_attribute("data-verdict")
                lines.append(summary(f"FLUX.2 [klein] 4B, 24 GB ({verdict})", measure(page, args.n)))
                before = rev(page)
                page.click("#preset-dev")
                wait_new_estimate(page, before)
                page.wait_for_selector("#estimate-verdict[data-verdict='does_not_fit']", timeout=30_000)
                page.locator("#rec-0").wait_for(state="visible", timeout=30_000)
                verdict = page.locator("#estimate-verdict").get_attribute("data-verdict")
                lines.append(summary(f"FLUX.2 [dev], 24 GB ({verdict})", measure(page, args.n)))
                browser.close()
        finally:
            demo.close()
    print("estimate refresh in the browser (target: median < 100 ms, p95 < 200 ms)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
