"""Trainer subprocesses started by the UI, and the run-directory snapshot the monitor polls.

The run directory is the source of truth (status.json, metrics.jsonl, samples/index.jsonl, train.log),
so a UI restart still monitors a run it did not start. The process table adds what only the UI knows:
that a trainer it launched is still starting (no status of its own yet), that Stop was pressed then,
and the output of a trainer that died before it could write its own log (e.g. "dir is busy"). Every
child is reaped by a thread waiting on it, so none stays a zombie.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux2_lora import runs
from flux2_lora.process_tree import start_process
from flux2_lora.runs import RunState

_LOCK = threading.Lock()


@dataclass
class Job:
    proc: subprocess.Popen[bytes]
    out_path: Path
    kind: str
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    stop_requested: bool = False


_JOBS: dict[tuple[str, str], Job] = {}


def _key(run_dir: Path, kind: str) -> tuple[str, str]:
    return str(Path(run_dir).resolve()), kind


def launch(argv: list[str], run_dir: Path, kind: str, env: dict[str, str] | None = None) -> Job:
    """Start argv (a list: no shell) with its output in <run>/ui-<kind>.out; a thread reaps it."""
    out_path = Path(run_dir) / f"ui-{kind}.out"
    # Its own session: a UI Ctrl-C must not kill the run mid-checkpoint.
    proc = start_process(argv, env=env, output=out_path, own_session=True)
    job = Job(proc, out_path, kind)
    with _LOCK:
        _JOBS[_key(run_dir, kind)] = job

    def reap() -> None:
        proc.wait()
        job.ended_at = time.time()

    threading.Thread(target=reap, daemon=True, name=f"reap {kind} {proc.pid}").start()
    return job


def job(run_dir: Path, kind: str) -> Job | None:
    with _LOCK:
        return _JOBS.get(_key(run_dir, kind))


def jobs() -> list[Job]:
    with _LOCK:
        return list(_JOBS.values())


def is_running(run_dir: Path, kind: str | None = None) -> bool:
    with _LOCK:
        items = [(k, j) for k, j in _JOBS.items() if k[0] == str(Path(run_dir).resolve())]
    return any(j.proc.poll() is None for (_, knd), j in items if kind in (None, knd))


def process_info(run_dir: Path, kind: str) -> dict[str, Any]:
    j = job(run_dir, kind)
    if j is None:
        return {}
    code = j.proc.poll()
    return {
        "running": code is None,
        "returncode": code,
        "pid": j.proc.pid,
        "stop_requested": j.stop_requested,
        "started_at": j.started_at,
        "output": _tail(j.out_path, 30),
    }


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-32 * 1024 :].decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def own_status(run: Path, j: Job | None) -> runs.RunStatus | None:
    """The run's status if it belongs to the trainer the UI launched last (or to any trainer when the UI
    launched none): a status.json left by an earlier run in the same folder is not this run's."""
    status = runs.read_status(run)
    if status is None or j is None or j.kind != "train":
        return status
    if j.proc.poll() is None and status.pid != j.proc.pid:
        return None  # ours is still starting; the file is the previous run's until ours takes over
    if j.proc.poll() is not None and status.pid != j.proc.pid and (status.updated_at or 0) < j.started_at:
        return None  # ours ended before writing anything
    return status


def kill_group(j: Job, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(j.proc.pid, sig)  # the trainer leads its own session (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def stop(run: Path, timeout_s: float) -> dict[str, Any]:
    """Stop the run's trainer (or pre-flight), gracefully: the stop file it polls after each step, SIGTERM
    once its handlers are installed, SIGKILL after ``timeout_s``. Works while it is still starting: the
    stop file is written before the trainer is up and written again when it is (an older trainer cleared
    it at start)."""
    pre = job(run, "preflight")
    if pre is not None and pre.proc.poll() is None:
        pre.stop_requested = True
        kill_group(pre, signal.SIGTERM)  # pre-flight writes nothing worth a checkpoint
        return {"ok": True, "message": "pre-flight stopped"}
    j = job(run, "train")
    status = runs.read_status(run)
    starting = j is not None and j.proc.poll() is None and (status is None or status.pid != j.proc.pid)
    if starting:
        assert j is not None
        j.stop_requested = True
        runs.write_stop_request(run)
        threading.Thread(
            target=_stop_starting, args=(run, j, timeout_s), daemon=True, name=f"stop {run.name}"
        ).start()
        return {"ok": True, "message": "stop requested: the trainer stops as soon as it is up"}
    if j is not None:
        j.stop_requested = True
    if runs.request_stop(run):
        _force_stop_later(run, timeout_s)
        return {"ok": True, "message": "stop requested: saving a checkpoint, then stopping"}
    return {"ok": False, "message": "this run is not running"}


def _stop_starting(run: Path, j: Job, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    rewritten = False
    while j.proc.poll() is None and time.time() < deadline:
        status = runs.read_status(run)
        if not rewritten and status is not None and status.pid == j.proc.pid:
            runs.write_stop_request(run)
            rewritten = True
        time.sleep(0.1)
    if j.proc.poll() is None:
        _kill_and_record(run, j)


def _force_stop_later(run: Path, timeout_s: float) -> None:
    """SIGKILL the trainer if the graceful stop has not ended it after timeout_s."""

    def watch() -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if not runs.is_locked(run):
                return
            time.sleep(0.25)
        j = job(run, "train")
        if j is not None and j.proc.poll() is None:
            _kill_and_record(run, j)
        else:
            runs.force_stop(run)

    threading.Thread(target=watch, daemon=True, name=f"force-stop {run.name}").start()


def _kill_and_record(run: Path, j: Job) -> None:
    kill_group(j)
    j.proc.wait()
    status = runs.read_status(run)
    if status is not None and status.pid == j.proc.pid and not status.is_final:
        status.state = RunState.STOPPED
        status.message = f"force-stopped at step {status.step} after the graceful stop timed out"
        status.updated_at = time.time()
        runs.write_json_atomic(run / runs.STATUS_FILE, status.to_dict())


def stop_all(timeout_s: float = 10.0) -> None:
    """End every child the UI started (at UI exit and in tests): SIGTERM, then SIGKILL."""
    live = [j for j in jobs() if j.proc.poll() is None]
    for j in live:
        kill_group(j, signal.SIGTERM)
    deadline = time.time() + timeout_s
    for j in live:
        try:
            j.proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            kill_group(j)
            j.proc.wait()


def _thin(records: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    if len(records) <= max_points:
        return records
    stride = -(-len(records) // max_points)
    return records[::stride] + ([records[-1]] if (len(records) - 1) % stride else [])


_EMPTY: dict[str, Any] = {
    "step": 0,
    "total_steps": 0,
    "eta_seconds": None,
    "seconds_per_step": None,
    "error": None,
    "extra": {},
    "lora": None,
    "checkpoints": [],
    "metrics": [],
    "samples": [],
    "ranks": [],
}


def snapshot(run: Path, served: Any, max_points: int = 2000) -> dict[str, Any]:
    """Status, metrics, samples and logs of one run directory (JSON-able). ``served(path)`` returns the
    sample file if the UI may serve it (inside the runs folder), else None."""
    j = job(run, "train")
    proc = process_info(run, "train")
    status = own_status(run, j)
    pre = process_info(run, "preflight")
    preflight = {
        "running": bool(pre.get("running")),
        "output": pre.get("output", ""),
        "result": read_json(run / "preflight.json"),
        "stopped": bool(pre.get("stop_requested")),
    }
    if status is None and proc:
        # The UI's trainer has no status of its own yet (starting), or died before writing one.
        if proc["running"]:
            state = "stopping" if proc["stop_requested"] else RunState.STARTING
            message = (
                "stop requested; the trainer stops as soon as it is up"
                if proc["stop_requested"]
                else ("starting the trainer (loading libraries)")
            )
        elif proc["stop_requested"]:
            state, message = RunState.STOPPED, "stopped before the trainer was up"
        else:
            state = RunState.FAILED
            message = proc.get("output", "")[-2000:] or f"trainer exited with {proc['returncode']}"
        return {
            **_EMPTY,
            "state": state,
            "message": message,
            "final": state in runs.STATES_FINAL,
            "log": proc.get("output", ""),
            "preflight": preflight,
        }
    if status is None:
        return {**_EMPTY, "state": "none", "message": "", "final": False, "log": "", "preflight": preflight}
    st = status.to_dict()
    metrics = [
        {k: m.get(k) for k in ("step", "loss", "lr", "sec_per_step", "eta_s", "gpu_mem_gib", "rss_gib")}
        for m in runs.read_jsonl(run / runs.METRICS_FILE)
    ]
    samples = []
    for s in runs.read_jsonl(run / runs.SAMPLES_INDEX):
        f = served(run / str(s.get("file", "")))
        if f is not None:
            sample = {
                "step": s.get("step"),
                "prompt": s.get("prompt", ""),
                "file": str(f),
                "index": s.get("index"),
            }
            if isinstance(s.get("references"), list):  # an edit sample: the images it edits
                sample["references"] = [str(r) for r in s["references"]]
            samples.append(sample)
    lora = run / runs.LORA_FILE
    return {
        "state": st["state"],
        "step": st.get("step", 0),
        "total_steps": st.get("total_steps", 0),
        "eta_seconds": st.get("eta_seconds"),
        "seconds_per_step": st.get("seconds_per_step"),
        "message": st.get("message", ""),
        "error": st.get("error"),
        "extra": st.get("extra", {}),
        "final": status.is_final,
        "lora": str(lora) if lora.is_file() else None,
        "checkpoints": [str(p) for p in runs.list_checkpoints(run)],
        "metrics": _thin(metrics, max_points),
        "evals": [{"step": r["step"], "eval_loss": r["eval_loss"]} for r in runs.read_eval(run)],
        "ranks": runs.read_ranks(run),  # every process's memory (multi-process runs)
        "samples": samples[-48:],
        "log": runs.log_tail(run, 40) or proc.get("output", ""),
        "preflight": preflight,
    }
