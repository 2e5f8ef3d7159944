"""Operations of the web UI beside training itself: the training queue and its runner, "sample now" /
"save now" for a running run, and captioning a dataset folder (no Gradio, no torch).

The queue is :mod:`flux2_lora.job_queue`'s (``<runs>/queue/``), so the CLI and the UI share it and a UI
that is closed and reopened shows it as it was. The UI's runner is that module's worker in a thread of
this process: it holds the queue's worker lock (never two workers, so never two of its trainers at once)
and starts no job while another trainer runs in the runs folder (one started with Start, or from the
CLI). Captioning imports torch, so it runs as a ``flux2-lora caption`` subprocess.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from flux2_lora import job_queue, runs
from flux2_lora.config import DatasetSection
from flux2_lora.config.io import to_yaml, validate_section
from flux2_lora.job_queue import FINAL, Job, JobState, Queue, QueueError, run_worker
from flux2_lora.variants import is_demo
from flux2_lora.webui import monitor
from flux2_lora.webui.jobs import _busy, _err, judged
from flux2_lora.webui.paths import AppPaths, PathRefused, resolve_inside

_LOCK = threading.Lock()
_RUNNERS: dict[Path, Runner] = {}


# ---- the queue ---------------------------------------------------------------------------------------
def other_trainer(paths: AppPaths, own: frozenset[Path] = frozenset()) -> bool:
    """A trainer runs in the runs folder: one the UI started (still loading, so no lock yet), or any
    that holds its run's lock (the CLI's, another UI's); ``own``: the runs of the queue's running jobs,
    which hold their locks too (with several GPUs the next job starts beside them)."""
    if any(j.kind in ("train", "preflight") and j.proc.poll() is None for j in monitor.jobs()):
        return True
    return any(runs.is_locked(r) for r in runs.iter_runs(paths.runs) if r.resolve() not in own)


class Runner:
    """The UI's queue worker for one runs folder: a thread that runs :func:`run_worker` until the queue
    is empty (started again by the next Add to queue), on every GPU of the machine (one job each)."""

    def __init__(self, paths: AppPaths) -> None:
        self.paths = paths
        self.queue = Queue(paths.runs)
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.lines: deque[str] = deque(maxlen=40)

    def running(self) -> bool:
        return self.thread is not None

    def start(self) -> str:
        with _LOCK:
            if self.thread is not None:
                return "the queue runner of this UI is running"
            if self.queue.worker_alive():
                return "another worker (flux2-lora queue run) runs this queue: it starts the jobs"
            if not any(j.state == JobState.QUEUED for j in self.queue.jobs()):
                return "nothing is queued"
            self.stopping.clear()
            self.thread = threading.Thread(target=self._work, daemon=True, name="queue runner")
            self.thread.start()
        return "the queue runner started"

    def _hold(self) -> bool:
        """No job may start: a trainer the queue did not start runs (it may use any GPU)."""
        own = frozenset(Path(j.run_dir).resolve() for j in self.queue.jobs() if j.state == JobState.RUNNING)
        return other_trainer(self.paths, own)

    def _work(self) -> None:
        while True:
            # Several GPUs: one job on each, placed by the memory model as `flux2-lora queue run --gpus`
            # places them (job_queue's own rule); one GPU or none: one job at a time, as Start runs it.
            sizes = job_queue.gpu_inventory()
            several = len(sizes) > 1
            code = run_worker(
                self.queue,
                gpus=list(sizes) if several else (),
                fits=job_queue.fits_by_memory(sizes) if several else None,
                until_empty=True,
                poll_s=0.5,
                log=self.lines.append,
                should_stop=self.stopping.is_set,
                hold=self._hold,
            )
            with _LOCK:  # a job queued while the worker was finding the queue empty is not left waiting
                queued = any(j.state == JobState.QUEUED for j in self.queue.jobs())
                if code != 0 or self.stopping.is_set() or not queued:
                    self.thread = None
                    return

    def stop(self, timeout_s: float = 180.0) -> None:
        """Stop the runner: a running job checkpoints and is queued again (as after a restart)."""
        thread = self.thread
        self.stopping.set()
        if thread is not None:
            thread.join(timeout_s)


def runner(paths: AppPaths) -> Runner:
    with _LOCK:
        return _RUNNERS.setdefault(paths.runs, Runner(paths))


def stop_runners(cancel: bool = False, timeout_s: float = 180.0) -> None:
    """Stop every queue runner of this process (tests, UI exit); ``cancel``: cancel their jobs first."""
    for r in list(_RUNNERS.values()):
        if cancel:
            for job in r.queue.jobs():
                if job.state not in FINAL:
                    try:
                        r.queue.cancel(job.id)
                    except QueueError:
                        pass  # it ended meanwhile
        r.stop(timeout_s)


def _job_row(paths: AppPaths, job: Job) -> dict[str, Any]:
    row = job.to_dict()
    row["state"] = getattr(job.state, "value", job.state)
    row["name"] = runs.run_name(Path(job.run_dir), paths.runs)
    return row


def queue_list(paths: AppPaths) -> dict[str, Any]:
    """The queue's jobs, oldest first: {worker, runner, jobs, problems, log}. Jobs a worker that is gone
    left "running" are set right first (queued again to resume, or done), as a worker's start does."""
    r = runner(paths)
    r.queue.reconcile()  # nothing while a worker holds the queue
    jobs = r.queue.jobs()
    return {
        "ok": True,
        "worker": r.queue.worker_alive(),
        "runner": r.running(),
        "jobs": [_job_row(paths, j) for j in jobs],
        "problems": list(r.queue.problems),
        "log": list(r.lines),
    }


def queue_add(
    paths: AppPaths, config: dict[str, Any], start_anyway: bool = False, gpu: str | None = None
) -> dict[str, Any]:
    """Queue a run, judged as Start judges it (the same refusals); the runner starts it when the trainer
    before it has ended: {ok, job_id, run_dir, position | errors}."""
    parsed, run_dir, refused = judged(paths, config, start_anyway, gpu)
    if parsed is None or run_dir is None:
        return refused
    r = runner(paths)
    for job in r.queue.jobs():
        if job.state in (JobState.QUEUED, JobState.RUNNING) and Path(job.run_dir) == run_dir:
            return _err(
                "output.dir", f"{run_dir} is already the output of job {job.id} ({job.state}): choose another"
            )
    if _busy(run_dir):
        return _err("output.dir", f"{run_dir} has a live run: stop it, or choose another output folder")
    try:
        job = r.queue.add(to_yaml(parsed), run_dir)
    except OSError as e:
        return _err("", f"{r.queue.dir}: cannot write the queue ({e.strerror or e})")
    ahead = [j for j in r.queue.jobs() if j.state in (JobState.QUEUED, JobState.RUNNING) and j.id < job.id]
    return {
        "ok": True,
        "job_id": job.id,
        "run_dir": str(run_dir),
        "position": len(ahead) + 1,
        "runner": r.start(),
        "errors": [],
    }


def queue_cancel(paths: AppPaths, job_id: str) -> dict[str, Any]:
    """A queued job is cancelled; a running one's trainer is asked to stop (it checkpoints, then the job
    ends cancelled)."""
    try:
        job = runner(paths).queue.cancel(job_id)
    except QueueError as e:
        return {"ok": False, "message": str(e)}
    state = getattr(job.state, "value", job.state)
    said = "stop requested: its trainer checkpoints, then stops" if state == "running" else state
    return {"ok": True, "job_id": job.id, "state": state, "message": f"job {job.id}: {said}"}


def queue_run(paths: AppPaths) -> dict[str, Any]:
    """Start this UI's runner for what is queued (after a restart, the queue waits for this)."""
    message = runner(paths).start()
    return {"ok": runner(paths).running(), "message": message}


def cancel_running_job(paths: AppPaths, run: Path) -> None:
    """A queue job whose run is stopped from the monitor ends cancelled, not failed."""
    q = runner(paths).queue
    for job in q.jobs():
        if job.state == JobState.RUNNING and Path(job.run_dir) == run:
            try:
                q.cancel(job.id)
            except QueueError:
                pass


# ---- sample now / save now ---------------------------------------------------------------------------
ASK = {"sample": "sample now", "save": "save a checkpoint now"}
# The states of the trainer's step loop, which polls the requests after each step (before it: starting,
# caching, loading).
LIVE = ("training", "sampling", "evaluating", "checkpointing", "running")


def ask_state(snap: dict[str, Any]) -> tuple[bool, str]:
    """Whether Sample now / Save now can be asked of the monitored run, and why not."""
    state = snap.get("state")
    if state in LIVE:
        return True, ""
    if state in (None, "none"):
        return False, "Sample now / Save now: choose a running run"
    if state in ("starting", "caching", "loading"):
        return False, "Sample now / Save now: the trainer is still starting"
    return False, f"Sample now / Save now: the run is not running ({state})"


def ask_run(paths: AppPaths, run_dir: str, what: str) -> dict[str, Any]:
    """Ask the run's trainer to sample or save after its current step, as ``flux2-lora ask`` does: the
    request file it polls (runs.write_on_demand); its status acknowledges it (extra["on_demand"])."""
    if what not in ASK:
        return {"ok": False, "message": f"what: must be one of {', '.join(ASK)} (got {what!r})"}
    run = paths.existing_run(run_dir)
    if run is None or not (run / runs.STATUS_FILE).is_file():
        return {"ok": False, "message": "choose a running run of the runs folder"}
    status = runs.read_status(run)
    if not runs.is_locked(run) or status is None or status.state not in LIVE:
        return {"ok": False, "message": f"{run.name}: no trainer is running there (nothing to ask)"}
    runs.write_on_demand(run, what)
    return {
        "ok": True,
        "asked_at_step": status.step,
        "message": f"asked {run.name} to {ASK[what]} (after its current step, {status.step})",
    }


# ---- captioning --------------------------------------------------------------------------------------
CAPTION_MODES = ("keep", "overwrite", "prefix")
# captioning.DEFAULT_MODEL (tests/webui/test_ops_caption.py keeps them equal): the UI may not import
# captioning, whose functions import torch and the training package.
DEFAULT_CAPTION_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


def _caption_dataset(paths: AppPaths, value: str) -> Path:
    """The dataset folder captions may be written into: inside the allowed data folders (or an upload the
    UI unpacked), never the runs folder, never the built-in demo."""
    text = (value or "").strip()
    if not text or is_demo(text):
        raise PathRefused("dataset.path", "choose a dataset folder of your own (the demo has its captions)")
    real = resolve_inside(text, (paths.uploads, *paths.data_dirs))
    upload = real is not None and real != paths.uploads and resolve_inside(real, [paths.uploads]) is not None
    if real is None or (resolve_inside(real, [paths.runs]) is not None and not upload):
        roots = ", ".join(str(d) for d in paths.data_dirs)
        raise PathRefused(
            "dataset.path", f"{text} is outside the data folders captions may be written in ({roots})"
        )
    if not real.is_dir():
        raise PathRefused("dataset.path", f"{text} is not a folder")
    return real


def caption_model(paths: AppPaths, model: str) -> dict[str, Any]:
    """Whether the captioning model can be loaded here, decided as captioning.py decides (a local folder
    needs its config.json; a Hub id offline needs the local cache): {ok, model, message}."""
    text = (model or "").strip()
    if importlib.util.find_spec("transformers") is None:
        return {
            "ok": False,
            "model": text,
            "message": "captioning needs transformers (pip install transformers)",
        }
    if not text:
        return {"ok": False, "model": text, "message": "give the captioning model (a Hub id or a folder)"}
    try:
        source = paths.model_source(text)
    except PathRefused as e:
        return {"ok": False, "model": text, "message": f"the captioning model: {e.message}"}
    if source == "demo":
        return {
            "ok": False,
            "model": text,
            "message": "the demo model cannot caption; give a vision-language model",
        }
    local = Path(source)
    if local.is_absolute():
        if not (local / "config.json").is_file():
            return {
                "ok": False,
                "model": text,
                "message": f"{text}: the folder has no config.json (not a model)",
            }
        return {"ok": True, "model": source, "message": f"✔ captioning model: {text}"}
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(source, "config.json"), str)
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not cached and offline:
        return {
            "ok": False,
            "model": text,
            "message": f"{text} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
            "download it once online, or give a local model folder",
        }
    said = "in the local cache" if cached else "downloaded from the Hub on first use (several GB)"
    return {"ok": True, "model": source, "message": f"✔ captioning model: {text} ({said})"}


def _caption_slot(paths: AppPaths, dataset: Path) -> Path:
    """Where the UI keeps a captioning job's output: its generated folder, never the dataset."""
    key = hashlib.sha1(os.fsencode(str(dataset))).hexdigest()[:12]
    slot = paths.generated / f"caption-{key}"
    slot.mkdir(parents=True, exist_ok=True)
    return slot


def caption_start(
    paths: AppPaths,
    dataset: str,
    model: str,
    mode: str = "keep",
    trigger: str = "",
    caption_extension: str = ".txt",
    device: str = "auto",
) -> dict[str, Any]:
    """Start ``flux2-lora caption`` on a dataset folder: keep (caption only images without a caption),
    prefix (as keep, new captions start with the trigger word) or overwrite (every caption replaced)."""
    if mode not in CAPTION_MODES:
        return _err("mode", f"must be one of {', '.join(CAPTION_MODES)}")
    trigger = (trigger or "").strip()
    if mode == "prefix" and not trigger:
        return _err("dataset.trigger_word", "set the trigger word first: new captions start with it")
    # The dataset section's own rules for these fields (what training will read back).
    section, issues = validate_section(
        DatasetSection, {"caption_extension": caption_extension, "trigger_word": trigger}, "dataset"
    )
    if section is None:
        return {"ok": False, "errors": [{"field": i.path, "message": i.message} for i in issues]}
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:[0-9]{1,2}", device or ""):
        return _err("device", "must be auto, cpu, cuda or cuda:N")
    try:
        folder = _caption_dataset(paths, dataset)
    except PathRefused as e:
        return _err(e.field, e.message)
    m = caption_model(paths, model)
    if not m["ok"]:
        return _err("caption_model", m["message"])
    slot = _caption_slot(paths, folder)
    if monitor.is_running(slot, "caption"):
        return _err("dataset.path", f"{folder} is being captioned already")
    argv = [
        sys.executable,
        "-m",
        "flux2_lora.cli",
        "caption",
        str(folder),
        f"--model={m['model']}",
        f"--mode={mode}",
        f"--caption-extension={caption_extension}",
        f"--device={device}",
    ]
    if trigger and mode != "keep":  # keep writes the model's words as they are (the CLI's rule)
        argv.append(f"--trigger={trigger}")
    monitor.launch(argv, slot, "caption")
    return {
        "ok": True,
        "dataset": str(folder),
        "message": f"captioning {folder.name} ({mode}): the counts follow in the output",
        "errors": [],
    }


def caption_status(paths: AppPaths, dataset: str) -> dict[str, Any]:
    """The captioning job of a dataset folder: {state: none|running|done|failed, progress, output}."""
    try:
        folder = _caption_dataset(paths, dataset)
    except PathRefused as e:
        return {"ok": False, "state": "none", "message": e.message}
    info = monitor.process_info(_caption_slot(paths, folder), "caption")
    if not info:
        return {"ok": True, "state": "none", "progress": "", "output": ""}
    # tqdm redraws its bar with carriage returns: the last one drawn is the progress.
    lines = [seg.strip() for line in info["output"].splitlines() for seg in line.split("\r") if seg.strip()]
    bars = [seg for seg in lines if seg.startswith("captioning:")]
    state = "running" if info["running"] else "done" if info["returncode"] == 0 else "failed"
    said = [seg for seg in lines if not seg.startswith("captioning:")]
    return {
        "ok": True,
        "state": state,
        "returncode": info["returncode"],
        "progress": bars[-1] if bars else "",
        "output": "\n".join(said[-12:]),
    }
