"""Analytic training-phase peak vs the meta-tensor trace of the trainer's step, over the test matrix.

    python benchmarks/estimate_vs_trace.py [--double 2 --single 3]

Reduced depth keeps each trace under a second; tests/memory checks that blocks compose linearly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test matrix lives with the tests
from tests.memory.test_estimate import MATRIX, _on_arch, matrix_config

from flux2_lora.memory.trace import reduced, trace_training_step
from flux2_lora.variants import VARIANTS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=3)
    parser.add_argument("--variant", default="klein-4b")
    args = parser.parse_args()
    arch = reduced(VARIANTS[args.variant].transformer, args.double, args.single)
    worst = 0.0
    for dtype, targets, res, gc, batch, rank, opt in MATRIX:
        c = matrix_config(dtype, targets, res, gc, batch, rank, opt)
        traced = trace_training_step(c, arch)["peak_gib"]
        est = _on_arch(c, arch)
        err = (est - traced) / traced
        worst = max(worst, abs(err))
        print(
            f"{dtype:8} {targets:20} {res:5} gc={gc:5} b={batch} r={rank:<3} {opt:9} "
            f"trace {traced:7.3f} GiB  estimate {est:7.3f} GiB  {err:+.2%}"
        )
    print(f"worst |error| {worst:.2%} (target < 3%)")


if __name__ == "__main__":
    main()
