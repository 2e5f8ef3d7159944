"""Median time of one memory estimate and of the whole report with recommendations, for every shipped
preset, against the product description's targets: a cold estimate under 1 ms, the report under 10 ms.

    python benchmarks/estimate_speed.py [--runs N]

"cold" clears every cache of the memory model before each call (architecture facts included: what a
first estimate of a model costs); "warm" is what the UI's live panel sees when nothing changed. The
report (``estimate_report``: estimate, verdicts, host RAM and the recommendations' re-estimates) is
timed cold on the 24, 48 and 80 GB classes; its figure is the slowest of the three. Prints each figure
and whether each target holds; exits 1 when one does not. Timings depend on the machine and its load:
run it on an idle machine.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

from flux2_lora.config.io import load_config
from flux2_lora.config.presets import list_presets
from flux2_lora.memory import GPUS, estimate, estimate_report
from flux2_lora.memory.estimate import clear_caches

ESTIMATE_TARGET_MS = 1.0
REPORT_TARGET_MS = 10.0
CARDS = (GPUS[0], GPUS[3], GPUS[4])  # 24, 48 and 80 GB


def _median_ms(fn: Callable[[], object], runs: int, before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _verdict(ms: float, target: float) -> str:
    return "PASS" if ms < target else "SLOW"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200, help="runs per cold estimate (the report: a tenth)")
    args = parser.parse_args()
    worst_estimate = worst_report = 0.0
    for preset in [p.name for p in list_presets()]:
        config, _ = load_config(presets=[preset])
        estimate(config)  # imports and first-call setup out of the figures
        one = functools.partial(estimate, config)
        cold = _median_ms(one, args.runs, clear_caches)
        warm = _median_ms(one, args.runs * 2)
        reports = {
            card.name.split(" (")[0]: _median_ms(
                functools.partial(estimate_report, config, gpu=card.name),
                max(args.runs // 10, 5),
                clear_caches,
            )
            for card in CARDS
        }
        report = max(reports.values())
        worst_estimate, worst_report = max(worst_estimate, cold), max(worst_report, report)
        per_card = ", ".join(f"{name} {ms:.1f}" for name, ms in reports.items())
        print(
            f"{preset:12} estimate cold {cold:.3f} ms {_verdict(cold, ESTIMATE_TARGET_MS)}, warm {warm:.3f} ms; "
            f"report with recommendations (cold: {per_card}) {report:.1f} ms {_verdict(report, REPORT_TARGET_MS)}",
            flush=True,
        )
    print(
        f"slowest cold estimate {worst_estimate:.3f} ms (target < {ESTIMATE_TARGET_MS:g} ms): "
        f"{_verdict(worst_estimate, ESTIMATE_TARGET_MS)}; slowest report {worst_report:.1f} ms "
        f"(target < {REPORT_TARGET_MS:g} ms): {_verdict(worst_report, REPORT_TARGET_MS)}"
    )
    return 0 if worst_estimate < ESTIMATE_TARGET_MS and worst_report < REPORT_TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
