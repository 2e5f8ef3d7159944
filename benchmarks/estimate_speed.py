"""Median time of one memory estimate (target < 1 ms), for each shipped model preset.

    python benchmarks/estimate_speed.py

"cold" clears the estimate's caches before every call (a first estimate for a new architecture or
target list); "warm" is what the UI's live panel and the recommendations' re-estimates see. The target
applies to the cold figure. The full report adds verdicts and the recommendations' re-estimates.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from flux2_lora.config.io import load_config
from flux2_lora.memory import estimate, estimate_report
from flux2_lora.memory.estimate import clear_caches


def _median_ms(fn: Callable[..., object], runs: int, before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    worst = 0.0
    for preset in ("dev", "klein-9b", "klein-4b", "quickstart"):
        config, _ = load_config(presets=[preset])
        cold = _median_ms(lambda c=config: estimate(c), 300, clear_caches)
        warm = _median_ms(lambda c=config: estimate(c), 1000)
        report = _median_ms(lambda c=config: estimate_report(c, gpu="24"), 20, clear_caches)
        worst = max(worst, cold)
        print(
            f"{preset:10} estimate median cold {cold:.3f} ms, warm {warm:.3f} ms; "
            f"full report with recommendations (cold) {report:.1f} ms  {'PASS' if cold < 1 else 'SLOW'}"
        )
    print(f"slowest cold median {worst:.3f} ms (target < 1 ms)")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
