"""What a run reports: status.json, metrics.jsonl and train.log always; TensorBoard and W&B on request.

Only the main process writes. Every writer is best-effort except the run directory itself: a
TensorBoard or W&B failure is logged and training goes on.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from flux2_lora import runs
from flux2_lora.config import TrainConfig
from flux2_lora.units import GIB, KIB_PER_GIB

log = logging.getLogger("flux2_lora")


def setup_logging(run_dir: Path | None, is_main: bool) -> None:
    """Console + train.log for the main process; other ranks only warn, so logs do not repeat N times."""
    root = logging.getLogger("flux2_lora")
    root.handlers.clear()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    root.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    debug = bool(os.environ.get(DEBUG_ENV))
    console.setFormatter(fmt if debug else _NoTraceback("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    if run_dir is not None and is_main:
        # backslashreplace: a file name with undecodable bytes must not make logging itself fail.
        fh = _RunLog(run_dir / runs.LOG_FILE, encoding="utf-8", errors="backslashreplace")
        fh.setFormatter(fmt)
        root.addHandler(fh)


DEBUG_ENV = "FLUX2_LORA_DEBUG"  # set by `flux2-lora train --debug`


class _RunLog(logging.FileHandler):
    """train.log. A write that fails (a full disk) is said once, in one line, instead of logging's
    "--- Logging error ---" and a traceback for every record; the console log goes on."""

    _failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._failed:
            self._failed = True
            err = sys.exc_info()[1]
            reason = getattr(err, "strerror", None) or err or "write failed"
            sys.stderr.write(
                f"warning: cannot write {self.baseFilename} ({reason}); logging to the console only\n"
            )


def log_to_file(level: int, message: str, exc_info: Any = None) -> None:
    """A record for train.log only (the console gets its one line from the CLI)."""
    logger = logging.getLogger("flux2_lora")
    record = logger.makeRecord(logger.name, level, __file__, 0, "%s", (message,), exc_info)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class _NoTraceback(logging.Formatter):
    """The console gets one line per record; tracebacks go to train.log (and the console with --debug)."""

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return super().format(record)
        plain = logging.makeLogRecord(record.__dict__)
        plain.exc_info = plain.exc_text = plain.stack_info = None
        return super().format(plain) + " (traceback in train.log)"


def peak_memory() -> tuple[float | None, float]:
    """(peak CUDA memory allocated in GiB or None on CPU, current process RSS in GiB)."""
    import psutil
    import torch

    gpu = torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None
    return gpu, psutil.Process().memory_info().rss / GIB


def measured_peaks(gpu_phases: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The measured peaks a run's status and the pre-flight report, in GiB: GPU memory allocated and
    reserved (the largest of ``gpu_phases`` when given, else torch's peaks since their last reset; None
    on CPU) and the process's peak host RSS."""
    import resource

    import torch

    peaks: dict[str, Any] = {"gpu_allocated_peak_gib": None, "gpu_reserved_peak_gib": None}
    if torch.cuda.is_available() and gpu_phases:
        peaks = {
            "gpu_allocated_peak_gib": max(p["allocated_gib"] for p in gpu_phases.values()),
            "gpu_reserved_peak_gib": max(p["reserved_gib"] for p in gpu_phases.values()),
            "gpu_phases": dict(gpu_phases),
        }
    elif torch.cuda.is_available():
        peaks = {
            "gpu_allocated_peak_gib": torch.cuda.max_memory_allocated() / GIB,
            "gpu_reserved_peak_gib": torch.cuda.max_memory_reserved() / GIB,
        }
    peaks["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_GIB
    return peaks


class RunReporter:
    """Status, metrics, samples index, TensorBoard and W&B for one run (main process only)."""

    def __init__(self, run_dir: Path, config: TrainConfig, total_steps: int):
        self.run_dir = run_dir
        self.config = config
        self.status = runs.RunStatus(
            state="starting", total_steps=total_steps, pid=os.getpid(), started_at=time.time()
        )
        self._tb: Any = None
        self._wandb: Any = None
        self._step_times: list[float] = []
        self._overheads: dict[str, list[float]] = {}
        self._gpu_phases: dict[str, dict[str, float]] = {}
        evals = runs.read_eval(run_dir)  # a resumed run keeps its eval history (a fresh one has none)
        evals = [r for r in evals if math.isfinite(r["eval_loss"])]
        if evals:
            best = min(evals, key=lambda r: r["eval_loss"])
            self.status.extra.update(
                final_eval_loss=evals[-1]["eval_loss"],
                best_eval_loss=best["eval_loss"],
                best_eval_step=best["step"],
            )

    # -- status -----------------------------------------------------------------------------
    def set_state(self, state: str, message: str = "", **fields: Any) -> None:
        self.status.state = state
        self.status.message = message
        for k, v in fields.items():
            setattr(self.status, k, v)
        self.write_status()
        if message and state == runs.RunState.FAILED:
            log_to_file(
                logging.INFO, f"[{getattr(state, 'value', state)}] {message}"
            )  # the console gets its one line from the CLI
        elif message:
            log.info("[%s] %s", state, message)

    def write_status(self) -> None:
        """status.json as it stands (a small write and a rename, no fsync: cheap enough for every step)."""
        self.status.updated_at = time.time()
        try:
            runs.write_json_atomic(self.run_dir / runs.STATUS_FILE, self.status.to_dict())
        except OSError as e:
            raise runs.write_error(runs.STATUS_FILE, e) from None

    # -- trackers ---------------------------------------------------------------------------
    def open_trackers(self) -> None:
        if self.config.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / runs.TENSORBOARD_DIR))
            except Exception as e:  # tensorboard missing or unwritable: the run matters more
                log.warning("TensorBoard disabled: %s", e)
        if self.config.logging.wandb:
            try:
                import wandb

                mode: Literal["online", "offline"] = (
                    "online" if os.environ.get("WANDB_API_KEY") else "offline"
                )
                self._wandb = wandb.init(
                    project=self.config.logging.wandb_project,
                    dir=str(self.run_dir),
                    mode=mode,
                    config=self.config.model_dump(mode="json"),
                    name=self.run_dir.name,
                )
                log.info(
                    "W&B logging %s (%s)", mode, "WANDB_API_KEY set" if mode == "online" else "no API key"
                )
            except ImportError:
                log.warning("logging.wandb is on but wandb is not installed: pip install 'flux2-lora[wandb]'")
            except Exception as e:
                log.warning("W&B disabled: %s", e)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    # -- metrics ----------------------------------------------------------------------------
    def record_overhead(self, kind: str, seconds: float) -> None:
        self._overheads.setdefault(kind, []).append(seconds)

    def remaining_events(self, step: int) -> dict[str, int]:
        """Validations and checkpoints still to come after ``step`` (the end adds one sampling pass)."""
        total = self.status.total_steps
        val, out = self.config.validation, self.config.output
        samples = 0
        if val.enabled:
            samples = (total - 1) // val.every_n_steps - step // val.every_n_steps + 1
        ckpts = total // out.checkpoint_every - step // out.checkpoint_every if out.checkpoint_every else 0
        evals = total // val.eval_every - step // val.eval_every + 1 if val.eval_enabled else 0
        return {"sampling": max(samples, 0), "checkpoint": max(ckpts, 0), "eval": max(evals, 0)}

    def step_done(self, step: int, seconds: float) -> None:
        """Seconds per step (recent mean) and the ETA, including the sampling and checkpoints still due."""
        self._step_times.append(seconds)
        recent = self._step_times[-20:]
        sps = sum(recent) / len(recent)
        self.status.step = step
        self.status.seconds_per_step = sps
        eta = sps * (self.status.total_steps - step)
        for kind, count in self.remaining_events(step).items():
            times = self._overheads.get(kind)
            if times:
                eta += count * sum(times) / len(times)
        self.status.eta_seconds = eta
        # Every step, not every log_every: the monitor's progress and ETA move from the first step.
        self.write_status()

    def end_gpu_phase(self, phase: str) -> None:
        """Close a phase of the run (loading and caching, then training): its GPU peaks are kept apart,
        so each can be set beside the estimate's phase of the same name."""
        import torch

        if torch.cuda.is_available():
            self._gpu_phases[phase] = {
                "allocated_gib": torch.cuda.max_memory_allocated() / GIB,
                "reserved_gib": torch.cuda.max_memory_reserved() / GIB,
            }
            torch.cuda.reset_peak_memory_stats()

    def record_peaks(self, last_phase: str = "training") -> dict[str, Any]:
        """Peak GPU tensor memory (overall and per phase, ``last_phase`` ending now) and peak host RSS."""
        self.end_gpu_phase(last_phase)
        peaks = measured_peaks(self._gpu_phases)
        self.status.extra["measured"] = peaks
        return peaks

    def log_metrics(self, step: int, loss: float, lr: float) -> dict[str, Any]:
        gpu, rss = peak_memory()
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "sec_per_step": self.status.seconds_per_step,
            "eta_s": self.status.eta_seconds,
            "gpu_mem_gib": gpu,
            "rss_gib": rss,
            "time": time.time(),
        }
        _append(self.run_dir / runs.METRICS_FILE, record)
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/lr", lr, step)
            if record["sec_per_step"]:
                self._tb.add_scalar("train/sec_per_step", record["sec_per_step"], step)
            if gpu is not None:
                self._tb.add_scalar("memory/gpu_peak_gib", gpu, step)
        if self._wandb is not None:
            self._wandb.log({"loss": loss, "lr": lr, "gpu_mem_gib": gpu}, step=step)
        return record

    def log_eval(self, step: int, loss: float, seconds: float) -> None:
        """eval.jsonl, the trackers, and the final and best eval loss in the run's status."""
        self.record_overhead("eval", seconds)
        _append(
            self.run_dir / runs.EVAL_FILE,
            {"step": step, "eval_loss": loss, "time": time.time(), "seconds": seconds},  # NaN: null
        )
        extra = self.status.extra
        extra["final_eval_loss"] = loss if math.isfinite(loss) else None
        best = extra.get("best_eval_loss")
        if math.isfinite(loss) and (best is None or loss < best):
            extra["best_eval_loss"], extra["best_eval_step"] = loss, step
        if self._tb is not None:
            self._tb.add_scalar("eval/loss", loss, step)
        if self._wandb is not None:
            self._wandb.log({"eval_loss": loss}, step=step)

    def log_sample(
        self, step: int, index: int, prompt: str, image: Any, references: tuple[Path, ...] | list[Path] = ()
    ) -> Path:
        """Save a validation image as PNG, index it (with the reference images it edits, if any: the
        monitor shows them beside it), and send it to the trackers."""
        folder = self.run_dir / runs.SAMPLES_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"step{step:06d}_{index:02d}.png"
        tmp = path.with_name("." + path.name)
        try:
            image.save(tmp, format="PNG")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise runs.write_error(f"the sample {path.relative_to(self.run_dir)}", e) from None
        _append(
            self.run_dir / runs.SAMPLES_INDEX,
            {
                "step": step,
                "prompt": prompt,
                "file": str(path.relative_to(self.run_dir)),
                "index": index,
                **({"references": [str(r) for r in references]} if references else {}),
            },
        )
        if self._tb is not None:
            import numpy as np

            self._tb.add_image(f"samples/{index}", np.asarray(image.convert("RGB")), step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({f"samples/{index}": wandb.Image(image, caption=prompt)}, step=step)
        return path


def _append(path: Path, record: dict[str, Any]) -> None:
    try:
        runs.append_jsonl(path, record)
    except OSError as e:
        raise runs.write_error(path.name, e) from None


def estimate_summary(config: TrainConfig, num_processes: int) -> dict[str, Any] | None:
    """The memory model's figures for this config, stored beside the measured peaks."""
    try:
        from flux2_lora.memory import estimate_report
    except ImportError:
        return None
    try:
        report = estimate_report(config, num_processes=num_processes)
    except Exception as e:  # the estimate must never fail a finished run
        log.warning("memory estimate unavailable: %s", e)
        return None
    keys = (
        "allocated_peak_gib",
        "total_gib",
        "host_peak_gib",
        "host_gib",
        "image_tokens",
    )
    return {k: report[k] for k in keys if k in report}
