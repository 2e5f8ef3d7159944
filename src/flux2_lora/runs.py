"""The run directory: the one contract between the trainer process and everything that watches it.

No torch here: the web UI and ``flux2-lora runs`` read runs through this module only.

Layout of a run directory::

    config.yaml                      resolved config of the run
    status.json                      current state (written atomically by the trainer)
    metrics.jsonl                    one JSON line per logged step
    eval.jsonl                       one JSON line per held-out evaluation (when validation.eval_images > 0)
    train.log                        the trainer's log
    samples/index.jsonl              one JSON line per validation image (+ the PNGs beside it)
    checkpoints/checkpoint-<step>/   resumable state, newest K kept
    tensorboard/                     TensorBoard event files
    pytorch_lora_weights.safetensors the final LoRA (diffusers format)
    .lock                            flock held by the live trainer; dies with its process

The status file alone can lie (a trainer killed with SIGKILL never writes "failed"), so readers
reconcile it with the lock: a non-final state whose lock nobody holds is reported as failed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from flux2_lora.locks import FileLock
from flux2_lora.locks import is_held as is_held  # re-exported: readers probe owner files through runs


class RunState(str, Enum):
    """A run's life-cycle state as status.json spells it (str-valued: the file keeps the same strings,
    and a state read back from it compares equal to these)."""

    STARTING = "starting"
    RUNNING = "running"
    CHECKPOINTING = "checkpointing"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    UNREADABLE = "unreadable"  # status.json is damaged or not ours; its message says why

    def __str__(self) -> str:  # f-strings and str() give the value on every Python (3.12 changed mixins)
        return self.value


STATE_UNREADABLE = RunState.UNREADABLE
STATES_FINAL = (RunState.FINISHED, RunState.FAILED, RunState.STOPPED, RunState.UNREADABLE)
MAX_STATUS_BYTES = 1 << 20  # a status file is a few hundred bytes

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"  # one line per evaluation: {"step", "eval_loss", "time", "seconds"}
LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
STOP_FILE = "stop.request"
SAMPLES_DIR = "samples"
SAMPLES_INDEX = "samples/index.jsonl"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LORA_FILE = "pytorch_lora_weights.safetensors"
COMFYUI_LORA_FILE = "pytorch_lora_weights_comfyui.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
RANKS_DIR = "ranks"  # ranks/rank-<i>.json: each process's memory, written by rank 0 (several processes)
MAX_RANKS = 1024


class RunBusyError(RuntimeError):
    """Another live process owns this run directory."""


class RunWriteError(OSError):
    """A run file could not be written (a full disk, a quota, permissions): one line naming the file."""


def write_error(what: str, e: OSError, hint: str = "") -> RunWriteError:
    """``e`` as one line naming what was being written ("disk full while writing checkpoint-3: ...")."""
    if isinstance(e, RunWriteError):
        return e
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        head = f"disk full while writing {what}"
    elif e.errno == errno.EDQUOT:
        head = f"disk quota exceeded while writing {what}"
    else:
        head = f"could not write {what}"
    err = RunWriteError(f"{head}: {reason}" + (f"; {hint}" if hint else ""))
    err.errno = e.errno
    return err


def finite(value: Any) -> Any:
    """``value`` with NaN and ±Infinity as None: JSON has no such numbers (a diverged loss is one), and a
    file holding them is not JSON to other readers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


@dataclass
class RunStatus:
    state: str = RunState.STARTING
    step: int = 0
    total_steps: int = 0
    pid: int | None = None
    started_at: float | None = None
    updated_at: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    message: str = ""
    last_checkpoint: str | None = None
    final_lora: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.state in STATES_FINAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunStatus:
        """The status a status.json holds; ValueError saying which field is wrong, for anything else."""
        if not isinstance(d, dict):
            raise ValueError(f"holds a JSON {type(d).__name__}, not an object")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key, value in known.items():
            allowed = _FIELD_TYPES[key]
            if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
                raise ValueError(f"field {key!r} has a wrong type ({type(value).__name__})")
        return cls(**known)


_NUM = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "state": (str,),
    "step": (int,),
    "total_steps": (int,),
    "pid": (int, type(None)),
    "started_at": (*_NUM, type(None)),
    "updated_at": (*_NUM, type(None)),
    "seconds_per_step": (*_NUM, type(None)),
    "eta_seconds": (*_NUM, type(None)),
    "message": (str,),
    "last_checkpoint": (str, type(None)),
    "final_lora": (str, type(None)),
    "error": (str, type(None)),
    "extra": (dict,),
}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(finite(data), indent=1, default=str, allow_nan=False)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        # A full disk leaves an empty or partial temp file; the old status file stays as it was.
        tmp.unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(finite(record), default=str, allow_nan=False) + "\n")


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Every complete line; a line being written (no newline yet) or damaged is skipped."""
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):  # ValueError: also an integer of over 4300 digits
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out[-limit:] if limit else out


def read_eval(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's held-out evaluations, oldest first: ``{"step", "eval_loss", "time", "seconds"}`` each.

    A line whose step or loss is missing or of the wrong type is skipped (the file is read from disk)."""
    out: list[dict[str, Any]] = []
    for rec in read_jsonl(Path(run_dir) / EVAL_FILE):
        step, loss = rec.get("step"), rec.get("eval_loss")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        if not isinstance(loss, (int, float)) or isinstance(loss, bool):
            continue
        out.append(
            {
                "step": step,
                "eval_loss": float(loss),
                "time": _number(rec.get("time")),
                "seconds": _number(rec.get("seconds")),
            }
        )
    return out


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class RunLock(FileLock):
    """The trainer's flock on ``<run>/.lock`` (it records the pid); taken without waiting, RunBusyError
    naming the owner when another live process holds it."""

    def __init__(self, run_dir: str | Path):
        super().__init__(Path(run_dir) / LOCK_FILE)

    def owner_text(self) -> str:
        return str(os.getpid())

    def acquire(self, blocking: bool = False) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not super().acquire(blocking=False):
            owner = _read_lock_owner(self.path)
            raise RunBusyError(
                f"output.dir: {self.path.parent} is in use by a running trainer"
                + (f" (pid {owner})" if owner else "")
                + "; stop it first or choose another output directory"
            )
        return True

    def __enter__(self) -> RunLock:
        self.acquire()
        return self


def _read_lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(run_dir: str | Path) -> bool:
    """Whether a live process holds the run's lock (probing never blocks and releases at once)."""
    return is_held(Path(run_dir) / LOCK_FILE)


def log_tail(run_dir: str | Path, lines: int = 40) -> str:
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64 * 1024))
        data = f.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-lines:])


PREVIOUS_DIR = "previous"
_RUN_ARTIFACTS = (
    STATUS_FILE,
    METRICS_FILE,
    EVAL_FILE,
    LOG_FILE,
    SAMPLES_DIR,
    CHECKPOINTS_DIR,
    TENSORBOARD_DIR,
    RANKS_DIR,
    "wandb",
    LORA_FILE,
    COMFYUI_LORA_FILE,
    "README.md",  # model_card.CARD_FILE: it describes the run it was written by
)


def archive_previous(run_dir: str | Path) -> Path | None:
    """A fresh (not resumed) run into a directory that holds an earlier run: move that run's outputs to
    ``previous/<time>/`` so nothing is lost and the new run's metrics, samples and checkpoints start clean.
    An earlier run is a status.json, or a LoRA or checkpoints without one (copied in, or left by a trainer
    that died before its first status write). Call with the run lock held."""
    run = Path(run_dir)
    present = [name for name in _RUN_ARTIFACTS if (run / name).exists()]
    outputs = (STATUS_FILE, LORA_FILE, COMFYUI_LORA_FILE)
    has_checkpoints = (run / CHECKPOINTS_DIR).is_dir() and any((run / CHECKPOINTS_DIR).iterdir())
    if not has_checkpoints and not any(name in present for name in outputs):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
    dest = run / PREVIOUS_DIR / stamp
    n = 1
    while dest.exists():
        dest = run / PREVIOUS_DIR / f"{stamp}-{n}"
        n += 1
    dest.mkdir(parents=True)
    for name in present:
        os.replace(run / name, dest / name)
    if (run / CONFIG_FILE).is_file():
        shutil.copy2(run / CONFIG_FILE, dest / CONFIG_FILE)
    return dest


def read_status(run_dir: str | Path) -> RunStatus | None:
    """The run's state, reconciled with its lock: a live state without a live owner is a failure."""
    run = Path(run_dir)
    path = run / STATUS_FILE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_STATUS_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes is far more than a status holds")
        status = RunStatus.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, RecursionError) as e:
        # One damaged run must not hide the others: it is listed, as unreadable, with the reason.
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return RunStatus(
            state=STATE_UNREADABLE, message=f"{STATUS_FILE} is unreadable: {reason}", error=reason
        )
    if not status.is_final and not is_locked(run):
        status.state = RunState.FAILED
        status.error = (
            status.error or "the trainer process ended without finishing (killed, out of memory or crashed)"
        )
        status.message = (
            f"trainer died at step {status.step}/{status.total_steps}; resume from the last checkpoint"
        )
    return status


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ones live under a .tmp name and are skipped)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "meta.json").is_file():
            try:
                found.append((int(p.name[len(CHECKPOINT_PREFIX) :]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


# The stop protocol, for a run directory (its trainer) and a sweep folder (its worker) alike: whoever wants
# a stop writes STOP_FILE into the folder; the process working there polls for it, acts (a checkpoint,
# then exit) and removes it, so it cannot stop the next run in that folder. Signals only hurry it along.
def write_stop_request(folder: str | Path) -> None:
    """Ask the process working in ``folder`` (a trainer, a sweep worker) to stop gracefully."""
    (Path(folder) / STOP_FILE).write_text(str(time.time()))


def stop_requested(folder: str | Path) -> bool:
    """Whether a stop was asked for in ``folder`` and not yet acted on."""
    return (Path(folder) / STOP_FILE).is_file()


def stop_requested_at(folder: str | Path) -> float | None:
    """When the pending stop request was written (its file's mtime), None when there is none."""
    try:
        return (Path(folder) / STOP_FILE).stat().st_mtime
    except FileNotFoundError:
        return None


def clear_stop_request(folder: str | Path) -> None:
    """The stop was acted on, or was left by an earlier run: it must not stop the next one."""
    (Path(folder) / STOP_FILE).unlink(missing_ok=True)


# Asked of a running trainer (the monitor's "Sample now" / "Save now", `flux2-lora ask`): one file per kind
# that the trainer polls after each step, acts on, removes, and acknowledges in its status
# (extra["on_demand"][kind] = {"step", "done_at", "message"}).
ON_DEMAND = {"sample": "sample.request", "save": "save.request"}


def write_on_demand(run_dir: str | Path, kind: str) -> None:
    (Path(run_dir) / ON_DEMAND[kind]).write_text(str(time.time()))


def on_demand_requests(run_dir: str | Path) -> list[str]:
    """The kinds asked for and not yet acted on, in ON_DEMAND's order."""
    return [k for k, name in ON_DEMAND.items() if (Path(run_dir) / name).is_file()]


def clear_on_demand(run_dir: str | Path, kind: str) -> None:
    (Path(run_dir) / ON_DEMAND[kind]).unlink(missing_ok=True)


def request_stop(run_dir: str | Path) -> bool:
    """Ask the trainer to checkpoint and exit: a stop file it polls, plus SIGTERM to its pid."""
    run = Path(run_dir)
    write_stop_request(run)
    status = read_status(run)
    if status and not status.is_final and status.pid:
        try:
            os.kill(status.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        return True
    return False


def force_stop(run_dir: str | Path, wait_s: float = 10.0) -> bool:
    """SIGKILL the trainer after a graceful stop timed out, then record the run as stopped."""
    run = Path(run_dir)
    status = read_status(run)
    if not status or status.is_final or not status.pid:
        return False
    try:
        os.kill(status.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.time() + wait_s
    while is_locked(run) and time.time() < deadline:
        time.sleep(0.05)
    status.state = RunState.STOPPED
    status.message = f"force-stopped at step {status.step} after the graceful stop timed out; resume from the last checkpoint"
    status.updated_at = time.time()
    write_json_atomic(run / STATUS_FILE, status.to_dict())
    return True


@dataclass
class RunSummary:
    path: Path
    status: RunStatus | None
    lora: Path | None
    checkpoints: list[Path]
    last_metrics: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "status": self.status.to_dict() if self.status else None,
            "lora": str(self.lora) if self.lora else None,
            "checkpoints": [str(p) for p in self.checkpoints],
            "last_metrics": self.last_metrics,
        }


def iter_runs(root: str | Path, depth: int = 2) -> Iterator[Path]:
    """Run directories under root: any folder with a status.json, up to ``depth`` levels deep (a sweep's
    trials sit one level below the sweep). A run's own folders are never searched."""
    base = Path(root)
    try:
        if not base.is_dir():
            return
        if (base / STATUS_FILE).is_file():
            yield base
            return
        if depth <= 0:
            return
        children = sorted(base.iterdir())
    except OSError:  # an unreadable folder holds no runs we can show
        return
    for child in children:
        try:
            if not child.is_dir() or child.is_symlink():
                continue
        except OSError:
            continue
        yield from iter_runs(child, depth - 1)


def run_name(run: Path, root: str | Path) -> str:
    """A run as listed under ``root``: 'style', or for a sweep's trial 'my-sweep/trial-003'."""
    try:
        return run.resolve().relative_to(Path(root).resolve()).as_posix().strip(".") or run.name
    except (ValueError, OSError):
        return run.name


_RANK_FIELDS = (
    "rank",
    "local_rank",
    "host",
    "step",
    "time",
    "gpu_allocated_peak_gib",
    "gpu_reserved_peak_gib",
    "rss_gib",
    "rss_peak_gib",
)


def read_ranks(run_dir: str | Path) -> list[dict[str, Any]]:
    """Each process's memory of a multi-process run (empty for one process), by rank. Files that are not
    a rank record (damaged, foreign, oversized) are skipped; only the known fields are kept."""
    folder = Path(run_dir) / RANKS_DIR
    out: dict[int, dict[str, Any]] = {}
    try:
        files = sorted(folder.glob("rank-*.json"))[:MAX_RANKS] if folder.is_dir() else []
    except OSError:
        return []
    for file in files:
        try:
            if file.stat().st_size > 64 * 1024:
                continue
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(data, dict):
            continue
        rank = data.get("rank")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < MAX_RANKS * 64:
            continue
        record = {k: data.get(k) for k in _RANK_FIELDS}
        for k in _RANK_FIELDS[3:]:
            if not isinstance(record[k], _NUM) or isinstance(record[k], bool):
                record[k] = None
        record["host"] = str(record["host"])[:100] if isinstance(record["host"], str) else ""
        record["local_rank"] = record["local_rank"] if isinstance(record["local_rank"], int) else None
        out[rank] = record
    return [out[k] for k in sorted(out)]


def summarize(run_dir: str | Path) -> RunSummary:
    run = Path(run_dir)
    metrics = read_jsonl(run / METRICS_FILE)
    lora = run / LORA_FILE
    return RunSummary(
        path=run,
        status=read_status(run),
        lora=lora if lora.is_file() else None,
        checkpoints=list_checkpoints(run),
        last_metrics=metrics[-1] if metrics else None,
    )
