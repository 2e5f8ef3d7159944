"""Median time of one memory estimate (target < 1 ms), for each shipped model preset.

python benchmarks/estimate_speed.py
"""

from __future__ import annotations

import statistics
import time

from flux2_lora.config_io import load_config
from flux2_lora.memory import estimate, estimate_report


def main() -> None:
    for preset in ("dev", "klein-9b", "klein-4b", "quickstart"):
        config, _ = load_config(presets=[preset])
        times = []
        for _ in range(500):
            t0 = time.perf_counter()
            estimate(config)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        estimate_report(config, gpu="24")
        report_ms = (time.perf_counter() - t0) * 1e3
        median = statistics.median(times) * 1e3
        print(
            f"{preset:10} estimate median {median:.3f} ms (p95 {sorted(times)[474] * 1e3:.3f} ms)  "
            f"full report with recommendations {report_ms:.1f} ms  {'PASS' if median < 1 else 'SLOW'}"
        )


if __name__ == "__main__":
    main()
