"""How good is the pre-flight ETA? Runs `train --preflight`, then the real run, and compares.

    python benchmarks/preflight_eta.py [--preset quickstart] [--set section.key=value ...]

Prints the pre-flight ETA, the run's real duration (status.json: start to finished), their ratio
(target: within 25%), and measured peaks next to the estimate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flux2-eta-") as tmp:
        out = Path(tmp) / "run"
        base = [
            sys.executable,
            "-m",
            "flux2_lora.cli",
            "train",
            "--preset",
            args.preset,
            "--set",
            f"output.dir={out}",
        ]
        for o in args.overrides:
            base += ["--set", o]
        pre = subprocess.run([*base, "--preflight"], capture_output=True, text=True)
        if pre.returncode:
            print(pre.stderr[-2000:], file=sys.stderr)
            return 1
        print(pre.stdout)
        pf = json.loads((out / "preflight.json").read_text())
        real = subprocess.run(base, capture_output=True, text=True)
        if real.returncode:
            print(real.stderr[-2000:], file=sys.stderr)
            return 1
        status = json.loads((out / "status.json").read_text())
    duration = status["updated_at"] - status["started_at"]
    ratio = pf["eta_s"] / duration
    measured = status["extra"].get("measured", {})
    print(
        f"pre-flight ETA {pf['eta_s']:.1f} s   real run {duration:.1f} s   ratio {ratio:.2f}  (target 0.75–1.25)"
    )
    print(f"run s/step {status['seconds_per_step']:.3f}   pre-flight s/step {pf['seconds_per_step']:.3f}")
    print(f"run host peak RSS {measured.get('host_peak_rss_gib', float('nan')):.2f} GiB")
    return 0 if 0.75 <= ratio <= 1.25 else 2


if __name__ == "__main__":
    sys.exit(main())
