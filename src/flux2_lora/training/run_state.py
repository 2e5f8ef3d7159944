"""A run's trainable state: the adapter, the optimizer and the LR schedule, gathered and written as
checkpoints and read back on resume, with one process or several (under FSDP the adapter and optimizer
are sharded: gathering them is a collective, and only the main process reads or writes the run directory).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from flux2_lora import runs
from flux2_lora.config import TrainConfig
from flux2_lora.training import checkpoint as ckpt
from flux2_lora.training import distributed as dist_util
from flux2_lora.training.ema import AdapterEMA
from flux2_lora.training.outcome import TrainingDiverged
from flux2_lora.training.tracking import RunReporter

log = logging.getLogger("flux2_lora")


class TrainingState:
    def __init__(
        self,
        accelerator: Any,
        model: Any,
        optimizer: Any,
        lr_scheduler: Any,
        run_dir: Path,
        config: TrainConfig,
        variant: str,
        reporter: RunReporter | None,
    ):
        self.acc = accelerator
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.run_dir = run_dir
        self.config = config
        self.variant = variant
        self.reporter = reporter
        self.ema: AdapterEMA | None = None  # the main process's EMA of the adapter, when one is kept

    def _status(self, state: str, message: str = "", **fields: Any) -> None:
        if self.reporter is not None:
            self.reporter.set_state(state, message, **fields)

    def adapter(self) -> dict[str, torch.Tensor]:
        """The whole adapter by PEFT key. Under FSDP a collective (every process calls it) that leaves the
        tensors on the main process and an empty dict elsewhere."""
        model = self.acc.unwrap_model(self.model)
        return dist_util.full_adapter_state(model, self.acc.num_processes)

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer state keyed by parameter name (so any process count can load it); with several
        processes a collective, whose result is on the main process."""
        model = self.acc.unwrap_model(self.model)
        return dist_util.optimizer_state(model, self.optimizer, self.acc.num_processes)

    def save(self, step: int) -> Path | None:
        """Every process gathers its share; the main one writes. Returns the checkpoint (main process)."""
        acc = self.acc
        acc.wait_for_everyone()
        out = self.config.output
        if acc.is_main_process:
            self._status("checkpointing", f"saving checkpoint at step {step}")
        t0 = time.perf_counter()
        adapter = self.adapter()
        optimizer = self.optimizer_state() if out.save_optimizer_state else None
        # Poisoned weights are never saved: the newest checkpoint stays the last good one.
        poisoned = acc.is_main_process and not ckpt.all_finite(adapter)
        if dist_util.broadcast_object(poisoned):
            raise TrainingDiverged(step, math.nan, runs.latest_checkpoint(self.run_dir), "the LoRA weights")
        path = None
        if acc.is_main_process:
            path = ckpt.save_checkpoint(
                self.run_dir,
                step,
                adapter,
                optimizer,
                self.lr_scheduler.state_dict(),
                {"total_steps": self.config.training.max_steps, "variant": self.variant},
                keep=out.max_checkpoints,
                ema=self.ema.state_dict() if self.ema is not None else None,
            )
            if self.reporter is not None:
                self.reporter.record_overhead("checkpoint", time.perf_counter() - t0)
            self._status("training", "", last_checkpoint=str(path))
        acc.wait_for_everyone()
        return path

    def resume(self, resume: str) -> int:
        """Resolve ``resume`` on the main process (a checkpoint of another rank or other target layers is
        skipped for 'latest', refused for a folder), load it there and hand it to every process."""
        acc = self.acc
        if acc.num_processes == 1:
            expected = dist_util.adapter_shapes(acc.unwrap_model(self.model))
            path = ckpt.resolve_resume(
                self.run_dir,
                resume,
                validator=lambda p: ckpt.validate_checkpoint(p, expected),
                max_steps=self.config.training.max_steps,
            )
            return self.restore(path)
        state, problem = None, None
        if acc.is_main_process:
            try:
                expected = dist_util.adapter_shapes(acc.unwrap_model(self.model))
                path = ckpt.resolve_resume(
                    self.run_dir,
                    resume,
                    validator=lambda p: ckpt.validate_checkpoint(p, expected),
                    max_steps=self.config.training.max_steps,
                )
                state = self._read_checkpoint(path)
            except ckpt.CheckpointError as e:
                problem = str(e)
        problem = dist_util.broadcast_object(problem)
        if problem:  # every process stops with the main one's reason
            raise ckpt.CheckpointError(problem)
        return self._load_state(state)

    def _read_checkpoint(self, path: Path) -> dict[str, Any]:
        """A checkpoint's state with its optimizer state keyed by parameter name (older checkpoints keyed
        it by position); a state that does not match this run's optimizer is a CheckpointError."""
        state = ckpt.load_checkpoint(path)
        state["path"] = str(path)
        if state["optimizer"] is not None:
            try:
                state["optimizer"] = dist_util.by_name(
                    state["optimizer"], self.acc.unwrap_model(self.model), self.optimizer
                )
            except ValueError as e:
                raise ckpt.CheckpointError(f"--resume: {path / ckpt.OPTIMIZER_FILE}: {e}") from None
        return state

    def _load_state(self, state: dict[str, Any] | None) -> int:
        """Load the main process's checkpoint state into every process; returns its step."""
        acc = self.acc
        model = acc.unwrap_model(self.model)
        main = state or {}
        dist_util.load_states(
            model, self.optimizer, main.get("adapter"), main.get("optimizer"), acc.num_processes
        )
        rest = None
        if state is not None:
            rest = (state["scheduler"], int(state["meta"]["step"]), state["path"], state["optimizer"] is None)
        scheduler, step, path, no_optimizer = dist_util.broadcast_object(rest)
        if no_optimizer:
            log.warning(
                "checkpoint %s has no optimizer state: the optimizer restarts (output.save_optimizer_state)",
                path,
            )
        self.lr_scheduler.load_state_dict(scheduler)
        if self.ema is not None and state is not None:
            self._load_ema(state)
        log.info("resumed from %s at step %d", path, step)
        return step

    def _load_ema(self, state: dict[str, Any]) -> None:
        """The checkpoint's EMA (main process); one saved without an EMA restarts it from the resumed
        weights, with a warning."""
        assert self.ema is not None
        if state.get("ema") is None:
            log.warning(
                "checkpoint %s has no EMA (training.ema_decay was 0 then): the EMA starts from the resumed "
                "weights",
                state["path"],
            )
            self.ema.reset()
            return
        try:
            self.ema.load_state_dict(state["ema"])
        except ValueError as e:
            raise ckpt.CheckpointError(f"--resume: {Path(state['path']) / ckpt.EMA_FILE}: {e}") from None

    def restore(self, path: Path) -> int:
        """Resume this (single) process from the checkpoint folder ``path``; returns its step."""
        return self._load_state(self._read_checkpoint(path))
