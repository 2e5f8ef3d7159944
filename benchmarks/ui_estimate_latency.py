"""Browser-measured latency from a field change to the estimate panel updating (target: median < 100 ms).

Starts the UI on a free port (runs folder in a temp dir), opens it in Chromium, moves the LoRA rank slider
N times and times, inside the page, until #estimate-verdict shows a new revision.
Usage: python benchmarks/ui_estimate_latency.py [--n 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.webui.browser import MEASURE_JS, launch_browser  # noqa: E402
from tests.webui.conftest import free_port  # noqa: E402

from flux2_lora.webui.app import launch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as runs:
        demo, url = launch(runs, port=free_port(), prevent_thread_lock=True, quiet=True)
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("document.querySelector('#estimate-verdict')?.dataset.rev", timeout=30_000)
            sel = "#field-lora-rank input[type=range]"
            times = []
            for i in range(args.n + 3):
                ms = page.evaluate(MEASURE_JS, [sel, str(8 + 4 * (i % 20))])
                if i >= 3:  # the first few warm up the connection and caches
                    times.append(ms)
                page.wait_for_timeout(50)
            browser.close()
        demo.close()
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(
        f"estimate latency over {len(times)} changes: median {statistics.median(times):.1f} ms, "
        f"p95 {p95:.1f} ms, min {times[0]:.1f} ms, max {times[-1]:.1f} ms (target < 100 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
