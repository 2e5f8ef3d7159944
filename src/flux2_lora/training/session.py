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
from flux2_lora.training.tracking import RunReporter, setup_logging

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
        if not self._requested and self.run_dir is not None and (self.run_dir / runs.STOP_FILE).is_file():
            self._requested = True
        return self._requested

    def clear_stale(self, launched_at: float) -> None:
        """Remove a stop file left by an earlier run; keep one written since this run was launched."""
        if self.run_dir is None:
            return
        path = self.run_dir / runs.STOP_FILE
        try:
            if path.stat().st_mtime < launched_at:
                path.unlink()
        except FileNotFoundError:
            pass

    def acknowledge(self) -> None:
        """The stop was acted on: the file must not stop the next run in this directory."""
        if self.run_dir is not None:
            (self.run_dir / runs.STOP_FILE).unlink(missing_ok=True)


class RunSession:
    """``with RunSession(config, resume, is_main) as s:`` → ``s.reporter``, ``s.stop``, ``s.resume_path``."""

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
        self._checkpoint_validator = checkpoint_validator
        self._lock: runs.RunLock | None = None
        self._old_handlers: dict[int, Any] = {}

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
                self.resume_path = ckpt.resolve_resume(self.run_dir, self.resume)
            if self.is_main:
                save_config(cfg, self.run_dir / runs.CONFIG_FILE)
                self.reporter = RunReporter(self.run_dir, cfg, cfg.training.max_steps)
                self.reporter.set_state("loading", "resolving model and dataset")
                hold_point("loading", self.run_dir)
        except BaseException:
            self._release()
            raise
        self._old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

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
                if isinstance(exc, KeyboardInterrupt):
                    self.status("stopped", "interrupted")
                else:
                    # The traceback goes to train.log; the console gets one line from the CLI.
                    log.error("training failed", exc_info=(type(exc), exc, tb))
                    self.status("failed", f"{type(exc).__name__}: {exc}", error=str(exc))
        finally:
            for s, h in self._old_handlers.items():
                signal.signal(s, h)
            self._release()

    def _release(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
