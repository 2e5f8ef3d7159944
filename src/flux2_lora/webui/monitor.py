"""Trainer subprocesses started by the UI, and the run-directory snapshot the monitor polls.

The run directory is the source of truth (status.json, metrics.jsonl, samples/index.jsonl, train.log),
so a UI restart still monitors a run it did not start. The process table only reaps children and
keeps the output of a trainer that died before it could write its own log (e.g. "dir is busy").
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from flux2_lora import runs

_LOCK = threading.Lock()
_PROCS: dict[tuple[str, str], tuple[subprocess.Popen[bytes], Path]] = {}


def _key(run_dir: Path, kind: str) -> tuple[str, str]:
    return str(Path(run_dir).resolve()), kind


def launch(argv: list[str], run_dir: Path, kind: str) -> subprocess.Popen[bytes]:
    """Start argv (a list: no shell) with its output in <run>/ui-<kind>.out."""
    out_path = Path(run_dir) / f"ui-{kind}.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )  # a UI Ctrl-C must not kill the run mid-checkpoint
    with _LOCK:
        _PROCS[_key(run_dir, kind)] = (proc, out_path)
    return proc


def is_running(run_dir: Path, kind: str | None = None) -> bool:
    with _LOCK:
        items = [(k, v) for k, v in _PROCS.items() if k[0] == str(Path(run_dir).resolve())]
    return any(p.poll() is None for (_, knd), (p, _) in items if kind in (None, knd))


def process_info(run_dir: Path, kind: str) -> dict[str, Any]:
    with _LOCK:
        entry = _PROCS.get(_key(run_dir, kind))
    if entry is None:
        return {}
    proc, out_path = entry
    code = proc.poll()
    return {"running": code is None, "returncode": code, "output": _tail(out_path, 30)}


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


def force_stop_later(run_dir: Path, timeout_s: float) -> None:
    """SIGKILL the trainer if the graceful stop has not ended it after timeout_s."""

    def watch() -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if not runs.is_locked(run_dir):
                return
            time.sleep(0.25)
        runs.force_stop(run_dir)

    threading.Thread(target=watch, daemon=True, name=f"force-stop {run_dir.name}").start()


def _thin(records: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    if len(records) <= max_points:
        return records
    stride = -(-len(records) // max_points)
    return records[::stride] + ([records[-1]] if (len(records) - 1) % stride else [])


def snapshot(run: Path, max_points: int = 2000) -> dict[str, Any]:
    """Status, metrics, samples and logs of one run directory (JSON-able)."""
    status = runs.read_status(run)
    proc = process_info(run, "train")
    st = status.to_dict() if status else None
    state = st["state"] if st else ("starting" if proc.get("running") else "none")
    message = st.get("message", "") if st else ""
    if st is None and proc and not proc["running"]:
        # The trainer exited before writing a status (bad config, busy dir): its output says why.
        state, message = (
            "failed",
            proc.get("output", "")[-2000:] or f"trainer exited with {proc['returncode']}",
        )
    metrics = [
        {k: m.get(k) for k in ("step", "loss", "lr", "sec_per_step", "eta_s", "gpu_mem_gib", "rss_gib")}
        for m in runs.read_jsonl(run / runs.METRICS_FILE)
    ]
    samples = []
    for s in runs.read_jsonl(run / runs.SAMPLES_INDEX):
        f = (run / str(s.get("file", ""))).resolve()
        if run.resolve() in f.parents and f.is_file():
            samples.append({"step": s.get("step"), "prompt": s.get("prompt", ""), "file": str(f)})
    lora = run / runs.LORA_FILE
    return {
        "state": state,
        "step": st.get("step", 0) if st else 0,
        "total_steps": st.get("total_steps", 0) if st else 0,
        "eta_seconds": st.get("eta_seconds") if st else None,
        "seconds_per_step": st.get("seconds_per_step") if st else None,
        "message": message,
        "error": st.get("error") if st else None,
        "extra": st.get("extra", {}) if st else {},
        "final": state in runs.STATES_FINAL,
        "lora": str(lora) if lora.is_file() else None,
        "checkpoints": [str(p) for p in runs.list_checkpoints(run)],
        "metrics": _thin(metrics, max_points),
        "samples": samples[-24:],
        "log": runs.log_tail(run, 40) or proc.get("output", ""),
        "preflight": read_json(run / "preflight.json"),
    }
