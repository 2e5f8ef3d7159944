"""``flux2-lora runs [ROOT]``: every run with its true state (reconciled with the trainer's lock)."""

from __future__ import annotations

import argparse
import json
import time

from flux2_lora.cli.common import show
from flux2_lora.experiments.compare import finite
from flux2_lora.runs import STATE_UNREADABLE, iter_runs, log_tail, run_name, summarize


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list runs with state, steps and LoRA files")
    p.add_argument("root", nargs="?", default="runs", help="folder holding run directories (default: runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [summarize(r) for r in iter_runs(args.root)]
    if args.json:
        from flux2_lora.experiments.compare import jsonable

        # Read from disk: a NaN in a metrics line must not make the output invalid JSON.
        print(json.dumps(jsonable([r.to_dict() for r in rows]), indent=1, default=str))
        return 0
    if not rows:
        print(f"no runs under {show(args.root)}")
        return 0
    print(
        f"{'RUN':30} {'STATE':12} {'STEP':>11} {'ELAPSED':>8} {'GPU EST/MEAS':>15} {'HOST EST/MEAS':>15}  LORA"
    )
    for r in rows:
        s = r.status
        if s is None:
            continue
        start, end = finite(s.started_at), finite(s.updated_at) or time.time()
        elapsed = f"{end - start:>7.0f}s" if start is not None and end >= start else f"{'-':>8}"
        est, meas = s.extra.get("estimate"), s.extra.get("measured")
        gpu = f"{_gib(est, 'allocated_peak_gib')}/{_gib(meas, 'gpu_allocated_peak_gib')}"
        host = f"{_gib(est, 'host_peak_gib')}/{_gib(meas, 'host_peak_rss_gib')}"
        print(
            f"{show(run_name(r.path, args.root)):30} {show(s.state):12} {s.step:>5}/{s.total_steps:<5} {elapsed} "
            f"{gpu:>15} {host:>15}  {show(r.lora or '-')}"
        )
        if s.state in ("failed", STATE_UNREADABLE) and s.message:
            print(f"  {show(s.message)}")
            for line in log_tail(r.path, 3).splitlines():
                print(f"  | {show(line)}")
    return 0


def _gib(section: object, key: str) -> str:
    """A GiB figure from the status's extra fields (written by the trainer, but read from disk)."""
    v = finite(section.get(key)) if isinstance(section, dict) else None
    return f"{v:.2f}" if v is not None else "-"
