"""``flux2-lora ask RUN sample|save|stop``: ask a running trainer to sample now, save a checkpoint now, or
stop after this step (it checkpoints); ``--wait`` until its status acknowledges it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from flux2_lora.cli.common import fail, show


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask a running trainer to sample now, save now, or stop after this step")
    p.add_argument("run", help="the run folder of a live run")
    p.add_argument("what", choices=("sample", "save", "stop"))
    p.add_argument("--wait", action="store_true", help="wait until the trainer has done it")
    p.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most (default 3600)")
    p.set_defaults(func=run)


def _acknowledged(run_dir: Path, what: str, since: float) -> str | None:
    from flux2_lora import runs

    status = runs.read_status(run_dir)
    if status is None:
        return None
    if what == "stop":
        return status.message if status.is_final else None
    ack = (status.extra.get("on_demand") or {}).get(what) if isinstance(status.extra, dict) else None
    if isinstance(ack, dict) and isinstance(ack.get("done_at"), (int, float)) and ack["done_at"] >= since:
        return str(ack.get("message", "done"))
    return status.message if status.is_final else None


def run(args: argparse.Namespace) -> int:
    from flux2_lora import runs

    run_dir = Path(args.run).expanduser()
    if not (run_dir / runs.STATUS_FILE).is_file():
        return fail(f"{show(run_dir)}: not a run folder (no status.json)", 2)
    if not runs.is_locked(run_dir):
        return fail(f"{show(run_dir)}: no trainer is running there (nothing to ask)", 2)
    since = time.time()
    if args.what == "stop":
        runs.request_stop(run_dir)
    else:
        runs.write_on_demand(run_dir, args.what)
    asked = {"sample": "sample now", "save": "save a checkpoint now", "stop": "stop after this step"}
    print(f"asked {show(run_dir)} to {asked[args.what]}")
    if not args.wait:
        return 0
    deadline = since + args.timeout
    while time.time() < deadline:
        done = _acknowledged(run_dir, args.what, since)
        if done is not None:
            print(show(done))
            return 0
        if not runs.is_locked(run_dir):
            return fail(f"{show(run_dir)}: the trainer ended before it was done")
        time.sleep(0.5)  # polling the status file the trainer writes after each step
    return fail(f"{show(run_dir)}: not acknowledged within {args.timeout:g} s")
