"""A stand-in for ``flux2-lora train`` in the sweep driver's tests: writes a run directory as the trainer
does (status under the run lock, metrics.jsonl, eval.jsonl) with what a plan says for its trial number.

Usage: python fake_trainer.py CONFIG.yaml PLAN_JSON. The plan maps a trial number ("0", "1", …) to
{"loss": float, "evals": [float, ...], "then": "finish" | "crash" | "wait_stop" | "wait_peer"};
"wait_stop" writes ``.waiting`` and waits for the stop file (or SIGTERM) as a real trainer would, then
ends as stopped; "wait_peer" writes its CUDA_VISIBLE_DEVICES to ``.started`` and waits until another
trial of the sweep has started too.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import yaml

from flux2_lora import runs


def main() -> int:
    config = yaml.safe_load(Path(sys.argv[1]).read_text())
    plan = json.loads(sys.argv[2])
    run_dir = Path(config["output"]["dir"])
    number = str(int(run_dir.name.split("-")[-1]))
    todo = plan.get(number, {})
    lock = runs.RunLock(run_dir)
    lock.acquire()
    status = runs.RunStatus(state="training", total_steps=10, pid=__import__("os").getpid())

    def write(state: str, **fields: object) -> None:
        status.state = state
        for k, v in fields.items():
            setattr(status, k, v)
        runs.write_json_atomic(run_dir / runs.STATUS_FILE, status.to_dict())

    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    write("training")
    for i, value in enumerate(todo.get("evals", []), start=1):
        runs.append_jsonl(
            run_dir / runs.EVAL_FILE, {"step": i, "eval_loss": value, "time": time.time(), "seconds": 0.01}
        )
    runs.append_jsonl(run_dir / runs.METRICS_FILE, {"step": 10, "loss": todo.get("loss", 1.0)})
    then = todo.get("then", "finish")
    if then == "wait_peer":  # both trials of a two-GPU sweep must be running at once
        (run_dir / ".started").write_text(__import__("os").environ.get("CUDA_VISIBLE_DEVICES", "-"))
        deadline = time.time() + 120
        while len(list(run_dir.parent.glob("*/.started"))) < 2 and time.time() < deadline:
            time.sleep(0.02)
        then = "finish"
    if then == "crash":
        write("failed", error="boom: the fake trainer crashed")
        return 1
    if then == "wait_stop":
        (run_dir / ".waiting").write_text("1")
        deadline = time.time() + 120
        while not stopped and not (run_dir / runs.STOP_FILE).exists() and time.time() < deadline:
            time.sleep(0.02)
        write("stopped", message="stopped")
        return 0
    write("finished", step=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
