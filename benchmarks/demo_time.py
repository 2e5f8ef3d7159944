"""Time the README's first command: the quickstart LoRA on the embedded demo, on this machine's CPU.

    python benchmarks/demo_time.py            # cold: builds the demo model and dataset first
    python benchmarks/demo_time.py --warm     # reuses the demo cache in ~/.cache/flux2-lora

Prints wall time, trainer phases and the target (under 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 180.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", action="store_true", help="reuse the user's demo cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flux2-bench-") as tmp:
        env = dict(os.environ)
        if not args.warm:
            env["FLUX2_LORA_HOME"] = str(Path(tmp) / "home")
        out = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "flux2_lora.cli",
            "train",
            "--preset",
            "quickstart",
            "--set",
            f"output.dir={out}",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        status = json.loads((out / "status.json").read_text())
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_s = status["updated_at"] - status["started_at"]
    print(f"machine: {os.cpu_count()} cores, {cpu_name()}, Python {platform.python_version()}")
    print(f"quickstart ({'warm' if args.warm else 'cold'} cache): {status['step']} steps")
    print(f"  wall time, process start to exit: {wall:.1f} s   (target < {TARGET_S:.0f} s)")
    print(f"  trainer time, load to final LoRA: {train_s:.1f} s")
    print(f"  seconds per step: {status['seconds_per_step']:.3f}")
    print(f"  loss: first log {metrics[0]['loss']:.4f} → last log {metrics[-1]['loss']:.4f}")
    print("PASS" if wall < TARGET_S else "SLOWER THAN TARGET")
    return 0 if wall < TARGET_S else 2


if __name__ == "__main__":
    sys.exit(main())
