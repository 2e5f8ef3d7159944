"""The browser's main-thread work per estimate refresh: Chrome's own task and script time (CDP
Performance.getMetrics) per LoRA-rank change, with the refresh latency beside it.

On a loaded machine the latency (benchmarks/ui_estimate_latency.py) mostly measures the load; the
main-thread time per change is what a UI change makes cheaper or dearer. Compare two versions A/B,
interleaved on the same machine at the same load:

    python benchmarks/ui_main_thread.py [--preset dev] [--n 14]
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

from benchmarks.ui_estimate_latency import ui_in_browser, unlink_alpha  # noqa: E402
from tests.webui.browser import MEASURE_JS, open_page, rev, wait_new_estimate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="", help="a model preset button to click first (default: the demo)")
    ap.add_argument("--n", type=int, default=14, help="rank changes measured")
    args = ap.parse_args()
    os.environ.setdefault("FLUX2_LORA_HOME", tempfile.mkdtemp(prefix="flux2-home-"))
    with ui_in_browser() as (url, _, browser):
        page = open_page(browser, url)
        if args.preset:
            before = rev(page)
            page.click(f"#preset-{args.preset}")
            wait_new_estimate(page, before)
        unlink_alpha(page)
        page.wait_for_timeout(1000)
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def metrics() -> dict[str, float]:
            return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

        a, times = metrics(), []
        for i in range(args.n):
            times.append(page.evaluate(MEASURE_JS, ["#field-lora-rank input", str(12 + 4 * i)]))
            page.wait_for_timeout(400)  # the settled fixes search runs too, as for a user
        z = metrics()
    per = {k: 1000 * (z[k] - a[k]) / args.n for k in ("TaskDuration", "ScriptDuration")}
    print(
        f"{args.preset or 'demo'}: refresh median {statistics.median(times[2:]):.0f} ms; main thread per change: "
        f"tasks {per['TaskDuration']:.0f} ms, script {per['ScriptDuration']:.0f} ms "
        f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
