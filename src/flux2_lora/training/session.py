"""The run directory's life cycle around a training run, apart from training itself.

:class:`RunSession` takes the run lock, moves an earlier run aside (a fresh start) or finds the
checkpoint to resume, sets up logging, saves the resolved config, owns the status reporter, turns
SIGINT / SIGTERM and the UI's stop file into a :class:`StopFlag`, and turns whatever ends the run into
its final state. Only the main process touches the directory; the others get an inert session.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from types import TracebackType
from typing import Any

from flux2_lora import runs
from flux2_lora.config import TrainConfig
from flux2_lora.config.io import save_config
from flux2_lora.hooks import hold_point
from flux2_lora.training import checkpoint as ckpt
from flux2_lora.training.outcome import RunOutcome, TrainingDiverged
from flux2_lora.training.tracking import RunReporter, log_to_file, setup_logging

log = logging.getLogger("flux2_lora")
LOCK_HELD_ENV = "FLUX2_LORA_LOCK_HELD"  # set by a parent that holds the run lock for its workers
# Set by whoever launches the trainer (the UI, the multi-process launcher): a stop file written after
# this moment belongs to this run, so the trainer must act on it, not delete it.
LAUNCHED_AT_ENV = "FLUX2_LORA_LAUNCHED_AT"


def launch_time() -> float:
    """When this run was launched: the launcher's stamp, else this process's start."""
    stamp = os.environ.get(LAUNCHED_AT_ENV)
    if stamp:
        try:
            return float(stamp)
        except ValueError:
            pass
    import psutil

    return float(psutil.Process().create_time())


class StopFlag:
    """A graceful stop asked for by a signal or by the run directory's stop file."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir
        self._requested = False

    def request(self) -> None:
        self._requested = True

    def requested(self) -> bool:
        if not self._requested and self.run_dir is not None and runs.stop_requested(self.run_dir):
            self._requested = True
        return self._requested

    def clear_stale(self, launched_at: float) -> None:
        """Remove a stop file left by an earlier run; keep one written since this run was launched."""
        if self.run_dir is None:
            return
        written = runs.stop_requested_at(self.run_dir)
        if written is not None and written < launched_at:
            runs.clear_stop_request(self.run_dir)

    def acknowledge(self) -> None:
        """The stop was acted on: the file must not stop the next run in this directory."""
        if self.run_dir is not None:
            runs.clear_stop_request(self.run_dir)


class RunSession:
    """``with RunSession(config, resume, is_main) as s:`` → ``s.reporter``, ``s.stop``, ``s.resume_path``;
    ``s.finished`` is the outcome when ``--resume latest`` finds the run finished (nothing to do)."""

    def __init__(
        self,
        config: TrainConfig,
        resume: str | None,
        is_main: bool,
        *,
        checkpoint_validator: Any = None,
    ):
        self.config = config
        self.resume = resume
        self.is_main = is_main
        self.run_dir = Path(config.output.dir).expanduser().resolve()
        self.stop = StopFlag(self.run_dir if is_main else None)
        self.reporter: RunReporter | None = None
        self.resume_path: Path | None = None
        self.finished: RunOutcome | None = None
        self._checkpoint_validator = checkpoint_validator
        self._lock: runs.RunLock | None = None
        self._old_handlers: dict[int, Any] = {}
        # A resumed run's status.json and config.yaml as they were, put back if the resume is refused
        # (another rank, a damaged checkpoint) before a step was trained: the run's record is not ours yet.
        self._record: dict[str, bytes | None] | None = None

    def __enter__(self) -> RunSession:
        cfg = self.config
        archived = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not os.environ.get(LOCK_HELD_ENV):
                self._lock = runs.RunLock(self.run_dir)
                self._lock.acquire()  # RunBusyError reaches the CLI, which explains it
            self.stop.clear_stale(launch_time())
            archived = None if self.resume else runs.archive_previous(self.run_dir)
        setup_logging(self.run_dir if self.is_main else None, self.is_main)
        try:
            if archived is not None:
                log.info("the earlier run in %s was moved to %s", self.run_dir, archived)
            # Fail before loading anything; the trainer checks shapes once it has the LoRA. Only the main
            # process: another machine may not see the run directory (the trainer broadcasts its choice).
            if self.resume and self.is_main:
                self.resume_path = ckpt.resolve_resume(
                    self.run_dir, self.resume, max_steps=cfg.training.max_steps
                )
                self.finished = self._finished_run()
                if self.finished is None:
                    self._record = _snapshot(self.run_dir)
            if self.is_main and self.finished is None:
                try:
                    save_config(cfg, self.run_dir / runs.CONFIG_FILE)
                except OSError as e:
                    raise runs.write_error(runs.CONFIG_FILE, e) from None
                self.reporter = RunReporter(self.run_dir, cfg, cfg.training.max_steps)
                self.reporter.set_state("loading", "resolving model and dataset")
                hold_point("loading", self.run_dir)
        except BaseException as e:
            self._fail_quietly(e)
            self._release()
            raise
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _finished_run(self) -> RunOutcome | None:
        """`--resume latest` on a run that finished every step of this config: said, and nothing done."""
        status = runs.read_status(self.run_dir)
        lora = self.run_dir / runs.LORA_FILE
        total = self.config.training.max_steps
        if self.resume != "latest" or status is None or status.state != runs.RunState.FINISHED:
            return None
        if status.step < total or not lora.is_file():
            return None
        message = (
            f"the run in {self.run_dir} is finished ({status.step}/{status.total_steps} steps, LoRA at "
            f"{lora}): nothing to resume. To train on, raise training.max_steps above {status.step} and "
            "resume; to start over, run without --resume"
        )
        log.info("%s", message)
        return RunOutcome(
            "finished",
            status.step,
            total,
            lora=lora,
            checkpoint=self.resume_path,
            message=message,
            already_finished=True,
        )

    def started(self) -> None:
        """The trainer accepted the resume (its checkpoint is loaded): a failure now is this run's."""
        self._record = None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.warning("received %s: saving a checkpoint, then stopping", signal.Signals(signum).name)
        self.stop.request()

    def status(self, state: str, message: str = "", **fields: Any) -> None:
        if self.reporter is not None:
            self.reporter.set_state(state, message, **fields)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is not None:
                self._fail_quietly(exc)
        finally:
            for s, h in self._old_handlers.items():
                signal.signal(s, h)
            self._release()

    def _fail_quietly(self, exc: BaseException) -> None:
        """Record how the run ended in status.json and train.log; the console gets one line from the CLI
        (a full disk that keeps status.json from being written is no second error)."""
        if self._record is not None:
            log_to_file(
                logging.ERROR, f"resume refused: {exc}; the run's status.json and config.yaml are kept"
            )
            _restore(self.run_dir, self._record)
            return
        try:
            if isinstance(exc, KeyboardInterrupt):
                self.status(runs.RunState.STOPPED, "interrupted")
            elif isinstance(exc, _EXPLAINED):
                log_to_file(logging.ERROR, f"training failed: {exc}")
                self.status(runs.RunState.FAILED, str(exc), error=str(exc))
            else:
                log_to_file(logging.ERROR, "training failed", exc_info=(type(exc), exc, exc.__traceback__))
                self.status(runs.RunState.FAILED, f"{type(exc).__name__}: {exc}", error=str(exc))
        except OSError as e:
            log_to_file(
                logging.ERROR, f"{runs.STATUS_FILE}: could not record the failure ({e.strerror or e})"
            )

    def _release(self) -> None:
        if self.reporter is not None:
            try:
                self.reporter.close()
            except OSError as e:  # a tracker's last flush onto a full disk
                log_to_file(logging.WARNING, f"closing the trackers: {e.strerror or e}")
            self.reporter = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


# Failures whose message says what happened and what to do: recorded as they are, without a traceback.
_EXPLAINED: tuple[type[BaseException], ...] = (runs.RunWriteError, TrainingDiverged, ckpt.CheckpointError)


def _snapshot(run_dir: Path) -> dict[str, bytes | None]:
    """status.json and config.yaml as bytes (None: absent); a file too large to be ours is left out."""
    out: dict[str, bytes | None] = {}
    for name in (runs.STATUS_FILE, runs.CONFIG_FILE):
        path = run_dir / name
        try:
            if path.stat().st_size <= runs.MAX_STATUS_BYTES:
                out[name] = path.read_bytes()
        except FileNotFoundError:
            out[name] = None
        except OSError:
            continue
    return out


def _restore(run_dir: Path, record: dict[str, bytes | None]) -> None:
    for name, data in record.items():
        path = run_dir / name
        try:
            if data is None:
                path.unlink(missing_ok=True)
            else:
                tmp = path.with_name(f".{name}.{os.getpid()}.restore")
                try:
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
        except OSError as e:
            log_to_file(logging.ERROR, f"{path}: could not put back ({e.strerror or e})")
