"""A training queue on disk, beside the runs (pure Python: no torch).

``<runs>/queue/`` holds one JSON file per job (and the job's config as YAML beside it). A worker (``flux2-lora
queue run``, or the web UI's) starts the next queued job when a GPU is free, one job per GPU, and records
how each ended. The queue outlives its worker: the worker holds ``queue/.worker.lock`` (an flock: the
kernel drops it when the worker dies), so a job found "running" without a live worker was interrupted by
a crash or a restart, and is queued again to resume from its latest checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from flux2_lora import runs
from flux2_lora.locks import FileLock, is_held
from flux2_lora.process_tree import start_process, trainer_command

QUEUE_DIR = "queue"
WORKER_LOCK = ".worker.lock"
EDIT_LOCK = ".lock"
MAX_JOB_BYTES = 1 << 16
_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9]{4}$")


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class QueueError(Exception):
    """A queue request that cannot be done (an unknown id, a job that cannot be cancelled), named."""


@dataclass
class Job:
    id: str
    run_dir: str
    state: str = JobState.QUEUED
    added_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    gpu: str | None = None
    pid: int | None = None
    resume: str | None = None  # "latest" once a crash interrupted it
    cancel_requested: bool = False
    message: str = ""
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Queue:
    """The queue of one runs folder."""

    root: Path  # the runs folder
    problems: list[str] = field(default_factory=list)  # unreadable job files, named (they are skipped)

    @property
    def dir(self) -> Path:
        return self.root / QUEUE_DIR

    def config_file(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.yaml"

    def _job_file(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def _edit(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir / EDIT_LOCK)

    # ---- reading ---------------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """Every job, oldest first; a job file that is not a job is named in ``problems`` and skipped."""
        self.problems = []
        out: list[Job] = []
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.glob("*.json")):
            job = self._read(path)
            if job is not None:
                out.append(job)
        return out

    def _read(self, path: Path) -> Job | None:
        if not _ID.match(path.stem) or path.is_symlink():
            self.problems.append(f"{path.name}: not a job file of this queue; skipped")
            return None
        try:
            if path.stat().st_size > MAX_JOB_BYTES:
                raise ValueError("larger than a job file can be")
            data = json.loads(path.read_text(encoding="utf-8"))
            known = {k: data[k] for k in Job.__dataclass_fields__ if k in data}
            job = Job(**known)
            if job.id != path.stem or job.state not in {s.value for s in JobState}:
                raise ValueError("its id or state is not one of a job")
            return job
        except (OSError, ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            self.problems.append(f"{path.name}: unreadable job ({e}); skipped")
            return None

    def get(self, job_id: str) -> Job:
        if not _ID.match(job_id):
            raise QueueError(f"{job_id!r} is not a job id (like 20261207-030512-0001)")
        path = self._job_file(job_id)
        job = self._read(path) if path.is_file() else None
        if job is None:
            raise QueueError(f"no job {job_id} in {self.dir}")
        return job

    # ---- changing --------------------------------------------------------------------------------------
    def _write(self, job: Job) -> None:
        runs.write_json_atomic(self._job_file(job.id), job.to_dict())

    def add(self, config_yaml: str, run_dir: str | Path) -> Job:
        """Queue a validated config (its YAML text) that trains into ``run_dir``."""
        with self._edit():
            taken = {j.id for j in self.jobs()}
            stamp = time.strftime("%Y%m%d-%H%M%S")
            n = 1
            while f"{stamp}-{n:04d}" in taken or self._job_file(f"{stamp}-{n:04d}").exists():
                n += 1
            job = Job(id=f"{stamp}-{n:04d}", run_dir=str(run_dir), added_at=time.time())
            self.config_file(job.id).write_text(config_yaml, encoding="utf-8")
            self._write(job)
        return job

    def update(self, job_id: str, change: Callable[[Job], None]) -> Job:
        with self._edit():
            job = self.get(job_id)
            change(job)
            self._write(job)
        return job

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled; a running one is asked to stop (it checkpoints, then ends cancelled)."""
        job = self.get(job_id)
        if job.state in FINAL:
            raise QueueError(f"job {job_id} is {job.state} already")
        if job.state == JobState.RUNNING and Path(job.run_dir).is_dir():
            runs.write_stop_request(Path(job.run_dir))

            def ask(j: Job) -> None:
                j.cancel_requested = True

            return self.update(job_id, ask)

        def cancel(j: Job) -> None:
            j.state, j.ended_at, j.message = JobState.CANCELLED, time.time(), "cancelled before it started"

        return self.update(job_id, cancel)

    def worker_alive(self) -> bool:
        path = self.dir / WORKER_LOCK
        return path.exists() and is_held(path)

    def reconcile(self) -> list[str]:
        """Jobs left "running" by a worker that is gone: finished runs are done, the others are queued
        again to resume from their latest checkpoint (or from the start without one). Returns what changed."""
        if self.worker_alive():
            return []
        changed = []
        for job in self.jobs():
            if job.state != JobState.RUNNING:
                continue
            status = runs.read_status(job.run_dir)

            def fix(j: Job, status: runs.RunStatus | None = status) -> None:
                if status is not None and status.state == runs.RunState.FINISHED:
                    j.state, j.message = JobState.DONE, "finished while its worker was gone"
                elif j.cancel_requested:
                    j.state, j.message = JobState.CANCELLED, "cancelled"
                else:
                    has_checkpoint = runs.latest_checkpoint(j.run_dir) is not None
                    j.state, j.pid, j.gpu = JobState.QUEUED, None, None
                    j.resume = "latest" if has_checkpoint else None
                    j.message = "interrupted (its worker stopped); queued again" + (
                        " to resume from its latest checkpoint" if has_checkpoint else ""
                    )

            self.update(job.id, fix)
            changed.append(job.id)
        return changed


# A function that says whether a job's config fits one GPU (the memory model's verdict), by GPU id.
FitsGpu = Callable[[Path, str], bool]


def gpu_inventory() -> dict[str, float]:
    """This machine's GPUs as nvidia-smi lists them: {CUDA device id: memory in GiB}, in its order; {}
    without nvidia-smi. A size nvidia-smi cannot give ("[N/A]" on some virtual GPUs) is 0: unknown."""
    from flux2_lora.memory.gpus import nvidia_smi

    sizes: dict[str, float] = {}
    for row in nvidia_smi("gpu=index,memory.total"):
        if len(row) < 2 or not row[0].isdigit():
            continue
        try:
            sizes[row[0]] = float(row[-1]) / 1024
        except ValueError:
            sizes[row[0]] = 0.0
    return sizes


def fits_by_memory(sizes: dict[str, float]) -> FitsGpu:
    """The memory model's verdict for a job on a GPU of ``sizes`` ({id: GiB}, :func:`gpu_inventory`): the
    placement rule of every worker (the CLI's ``queue run --gpus`` and the web UI's runner)."""

    def fits(config_file: Path, gpu_id: str) -> bool:
        from flux2_lora.assess import assess
        from flux2_lora.config.io import load_config
        from flux2_lora.memory.gpus import Gpu

        size = sizes.get(gpu_id)
        if not size:
            return True  # the GPU's size is unknown here: the trainer's own check decides
        config, _ = load_config(config_file)
        report = assess(config, gpu=Gpu(f"GPU {gpu_id}", size), recommendations=False).report
        return report is None or report["gpu"]["verdict"] != "does_not_fit"

    return fits


def run_worker(
    queue: Queue,
    *,
    gpus: Sequence[str] = (),
    trainer: Callable[[Path, str | None], list[str]] | None = None,
    fits: FitsGpu | None = None,
    poll_s: float = 1.0,
    until_empty: bool = True,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
    should_stop: Callable[[], bool] = lambda: False,
    hold: Callable[[], bool] = lambda: False,
) -> int:
    """Run queued jobs, one per GPU (``gpus``: CUDA device ids; none: one job at a time on whatever the
    config says). Returns 0, or 1 when another worker holds the queue. ``fits``: whether a job's config
    fits a GPU; a job no GPU fits waits for one that does (never started to fail with an OOM). ``hold``: True
    while no job may start (the web UI's: a trainer it started itself is running)."""
    queue.dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(queue.dir / WORKER_LOCK)
    if not lock.acquire(blocking=False):
        log(f"another worker runs this queue ({queue.dir}); not starting a second")
        return 1
    make = trainer or (lambda cfg, resume: trainer_command(cfg, resume=resume))
    slots: list[str | None] = list(gpus) or [None]
    running: dict[str | None, tuple[Job, subprocess.Popen[bytes]]] = {}
    try:
        for job_id in queue.reconcile():
            log(f"job {job_id}: {queue.get(job_id).message}")
        while not should_stop():
            for slot, (job, proc) in list(running.items()):
                if proc.poll() is not None:
                    del running[slot]
                    ended = _ended(queue, job, proc.returncode)
                    log(f"job {job.id}: {ended.state} — {ended.message}")
            queued = [j for j in queue.jobs() if j.state == JobState.QUEUED]
            for job in [] if (queued and hold()) else queued:
                free = [s for s in slots if s not in running]
                if not free:
                    break
                cfg = queue.config_file(job.id)
                slot = next((s for s in free if s is None or fits is None or fits(cfg, s)), "none")
                if slot == "none":
                    if len(free) == len(slots):  # every GPU is free and none holds it: none ever will
                        _never_fits(queue, job, slots)
                        log(f"job {job.id}: failed — {queue.get(job.id).message}")
                    continue  # no free GPU holds it now; a larger one may free up
                running[slot] = (job, _start(queue, job, slot, make(cfg, job.resume)))
                log(f"job {job.id}: started" + (f" on GPU {slot}" if slot is not None else ""))
            idle = not running and not [j for j in queue.jobs() if j.state == JobState.QUEUED]
            if idle and until_empty:
                break
            time.sleep(poll_s)
    finally:
        for _job, proc in running.values():  # stopped with work in flight: the runs checkpoint and stop
            if proc.poll() is None:
                proc.terminate()
        for _job, proc in running.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        lock.release()
        queue.reconcile()  # what was running is queued again to resume
    return 0


def _never_fits(queue: Queue, job: Job, slots: Sequence[str | None]) -> None:
    def fail(j: Job) -> None:
        j.state, j.ended_at = JobState.FAILED, time.time()
        j.message = f"the estimate does not fit any GPU of this worker ({', '.join(map(str, slots))})"

    queue.update(job.id, fail)


def _start(queue: Queue, job: Job, slot: str | None, cmd: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.clear_stop_request(run_dir)  # left by an earlier stop: it would stop this job at once
    proc = start_process(cmd, env=env, output=queue.dir / f"{job.id}.out", die_with_parent=True)

    def started(j: Job) -> None:
        j.state, j.started_at, j.gpu, j.pid = JobState.RUNNING, time.time(), slot, proc.pid
        j.attempts += 1
        j.message = "running"

    queue.update(job.id, started)
    return proc


def _ended(queue: Queue, job: Job, returncode: int) -> Job:
    status = runs.read_status(job.run_dir)

    def end(j: Job) -> None:
        j.ended_at, j.pid = time.time(), None
        if status is not None and status.state == runs.RunState.FINISHED and returncode == 0:
            j.state, j.message = JobState.DONE, status.message or "finished"
        elif j.cancel_requested:
            j.state, j.message = JobState.CANCELLED, "cancelled while running (checkpointed)"
        else:
            why = (status.error or status.message) if status is not None else ""
            j.state = JobState.FAILED
            j.message = f"exit {returncode}" + (
                f": {why}" if why else f" (see {queue.dir / (j.id + '.out')})"
            )

    return queue.update(job.id, end)
