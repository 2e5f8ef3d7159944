"""The LoRA trainer: load → cache → train (checkpoints, samples, logs) → export.

Runs in its own process (the CLI, ``accelerate launch`` or the web UI's subprocess) and reports only
through the run directory (:mod:`flux2_lora.runs`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from flux2_lora import runs
from flux2_lora.config import TrainConfig
from flux2_lora.config.io import save_config
from flux2_lora.hooks import hold_point
from flux2_lora.timesteps import shift_sigma
from flux2_lora.training import checkpoint as ckpt
from flux2_lora.training.batches import (
    Item,
    LatentSource,
    PromptSource,
    SampleSchedule,
    build_items,
    derive_seed,
    pack,
    text_ids_for,
)
from flux2_lora.training.flow import flow_matching_loss, sample_density, sigmas_from_density
from flux2_lora.training.model import (
    MIXED_PRECISION,
    free_memory,
    inject_lora,
    load_pipeline_without_transformer,
    load_transformer,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
    resolve_text_encoder_layers,
)
from flux2_lora.training.optim import build_optimizer, build_scheduler
from flux2_lora.training.tracking import RunReporter, setup_logging
from flux2_lora.variants import get_variant

log = logging.getLogger("flux2_lora")
LOCK_HELD_ENV = "FLUX2_LORA_LOCK_HELD"  # set by a parent that holds the run lock for its workers


class StopRequested(Exception):
    pass


class Trainer:
    def __init__(self, config: TrainConfig, resume: str | None = None):
        self.config = config
        self.resume = resume
        self.run_dir = Path(config.output.dir).expanduser().resolve()
        self._stop = False
        self.reporter: RunReporter | None = None

    # ----------------------------------------------------------------------------- setup
    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.warning("received %s: saving a checkpoint, then stopping", signal.Signals(signum).name)
        self._stop = True

    def _stop_requested(self) -> bool:
        if not self._stop and (self.run_dir / runs.STOP_FILE).is_file():
            self._stop = True
        return self._stop

    def _status(self, state: str, message: str = "", **fields: Any) -> None:
        if self.reporter is not None:
            self.reporter.set_state(state, message, **fields)

    def _make_accelerator(self) -> Any:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        device = resolve_device(self.config.model.device, int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda" and not distributed:
            torch.cuda.set_device(device)
        self.dtype = resolve_dtype(self.config.model.dtype, device)
        if not distributed:  # a second Trainer in one process (tests, the pre-flight) may change precision
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(
            mixed_precision=MIXED_PRECISION[self.dtype],
            gradient_accumulation_steps=self.config.training.gradient_accumulation_steps,
            cpu=device.type == "cpu",
        )
        self.device = self.accelerator.device
        set_seed(self.config.training.seed)
        return self.accelerator

    # ----------------------------------------------------------------------------- phases
    def _load_data(self) -> list[Item]:
        from flux2_lora.data.archive import prepare_dataset_source
        from flux2_lora.data.demo import ensure_demo_dataset, is_demo
        from flux2_lora.data.scan import require_usable, scan_dataset

        ds = self.config.dataset
        root = (
            ensure_demo_dataset()
            if is_demo(ds.path)
            else prepare_dataset_source(Path(ds.path).expanduser(), self.run_dir / ".work")
        )
        report = scan_dataset(
            root,
            caption_extension=ds.caption_extension,
            default_caption=ds.default_caption,
            resolution=ds.resolution,
        )
        for p in report.problems:
            log.warning("dataset: %s: %s", p.file, p.message)
        require_usable(report)
        log.info("dataset: %d images from %s", len(report.items), root)
        return build_items(report, root, self.config)

    def _training_captions(self) -> list[str]:
        """Every caption text a step may use (what the cache must hold)."""
        out = [v for i in self.items for v in (i.variants or [i.caption])]
        if self.config.dataset.caption_dropout > 0:
            out.append("")
        return out

    def validation_prompts(self) -> list[str]:
        return self.config.validation.prompts or [self.items[0].caption or ""]

    def _cache(self, model_path: str, variant: str, items: list[Item]) -> None:
        mem = self.config.memory
        self._status("caching", "encoding captions and images")
        pipe = load_pipeline_without_transformer(model_path, variant, self.dtype)
        self.pipe_parts = pipe
        if mem.vae_slicing:
            pipe.vae.enable_slicing()
        if mem.vae_tiling:
            pipe.vae.enable_tiling()
        # cpu_offload: the text encoder (24B for [dev]) encodes on the CPU: slow, but no GPU memory at all.
        te_device = torch.device("cpu") if mem.cpu_offload else self.device
        pipe.text_encoder.to(te_device)
        pipe.vae.to(self.device)
        self.prompts = PromptSource(
            pipe,
            te_device,
            get_variant(variant).text_encoder.max_sequence_length,
            text_encoder_out_layers=resolve_text_encoder_layers(self.config.model, model_path, variant),
        )
        self.latents = LatentSource(items, self.config, pipe.vae, self.device)
        val = self.config.validation
        extra = self.validation_prompts() if val.enabled else []
        if val.enabled and self._uses_cfg(variant):
            extra = [*extra, ""]
        if mem.cache_text_embeddings:
            self.prompts.fill_cache(self._training_captions() + extra)
            pipe.text_encoder = None  # the largest component is not needed again
            self.prompts.pipe = pipe
        else:
            self.prompts.fill_cache(extra)
            if mem.cpu_offload:
                self._offload(pipe.text_encoder)
        if mem.cache_latents:
            self.latents.fill_cache()
            self._offload(pipe.vae)
        elif mem.cpu_offload:
            self._offload(pipe.vae)
        free_memory()

    def _offload(self, module: Any) -> None:
        """Move a frozen component off the GPU between uses (no-op when training on CPU)."""
        if module is not None and self.device.type != "cpu":
            module.to("cpu")

    def _uses_cfg(self, variant: str) -> bool:
        # [klein] base models take real classifier-free guidance (a second, empty-prompt pass).
        return (
            get_variant(variant).pipeline_class == "Flux2KleinPipeline"
            and self.config.validation.guidance_scale > 1
        )

    def _build_model(self, model_path: str, variant: str, arch: Any) -> int:
        self._status("loading", "loading the transformer")
        quant = self.config.memory.quantization
        transformer = load_transformer(model_path, self.dtype, quant, self.device)
        torch.manual_seed(derive_seed(self.config.training.seed, 3))  # LoRA init
        trainable = inject_lora(transformer, self.config.lora, arch)
        if self.config.memory.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if quant != "nf4" or self.device.type != "cuda":  # bnb models are placed by their loader
            transformer.to(self.device)
        self.transformer = transformer
        self.lora_params = [p for p in transformer.parameters() if p.requires_grad]
        log.info("LoRA: %s trainable parameters on %d layers", f"{trainable:,}", self._num_lora_layers())
        return trainable

    def _num_lora_layers(self) -> int:
        return sum(1 for n, _ in self.transformer.named_modules() if n.endswith("lora_A.default"))

    # ----------------------------------------------------------------------------- one step
    def _micro_batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        t = self.config.training
        acc = self.accelerator
        ds = self.config.dataset
        pairs = self.schedule.micro_batch(
            step, micro, acc.process_index, acc.num_processes, t.gradient_accumulation_steps
        )
        indices = [g for _, g in pairs]
        latents, captions = [], []
        for item, g in pairs:
            rng = torch.Generator().manual_seed(derive_seed(t.seed, 4, g))
            draws = torch.rand(3, generator=rng).tolist()  # flip, tag order, caption dropout
            flip = bool(ds.random_flip and draws[0] < 0.5)
            latents.append(self.latents.get(item, flip, derive_seed(t.seed, 5, g)))
            variants = self.items[item].variants
            caption = variants[int(draws[1] * len(variants))] if variants else self.items[item].caption
            captions.append("" if draws[2] < ds.caption_dropout else caption)
        x0 = torch.stack(latents).to(self.device, self.dtype)
        packed, ids = pack(x0)
        gen = torch.Generator().manual_seed(derive_seed(t.seed, 6, indices[0]))
        noise = torch.randn(packed.shape, generator=gen, dtype=torch.float32).to(self.device)
        u = sample_density(
            t.timestep_sampling,
            len(indices),
            generator=gen,
            logit_mean=t.logit_mean,
            logit_std=t.logit_std,
            mode_scale=t.mode_scale,
            sigmoid_scale=t.sigmoid_scale,
        )
        sigmas = shift_sigma(sigmas_from_density(u), t.timestep_shift, t.shift, packed.shape[1])
        embeds = self.prompts.get(captions).to(self.device, self.dtype)
        guidance = None
        if self.arch.guidance_embeds:
            guidance = torch.full((len(indices),), t.guidance_scale, device=self.device, dtype=torch.float32)
        return {
            "latents": packed,
            "latent_ids": ids,
            "prompt_embeds": embeds,
            "text_ids": text_ids_for(embeds),
            "sigmas": sigmas.to(self.device),
            "noise": noise,
            "guidance": guidance,
            "dropout_seed": torch.tensor(derive_seed(t.seed, 7, indices[0])),
        }

    def _train_step(self, step: int) -> float:
        t = self.config.training
        losses = []
        for micro in range(t.gradient_accumulation_steps):
            batch = self._micro_batch(step, micro)
            torch.manual_seed(int(batch.pop("dropout_seed")))  # LoRA dropout, reproducible per step
            with self.accelerator.accumulate(self.model):
                with self.accelerator.autocast():
                    loss = flow_matching_loss(self.model, weighting=t.loss_weighting, **batch)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and t.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.lora_params, t.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().float())
        self.lr_scheduler.step()
        mean = torch.stack(losses).mean()
        return float(self.accelerator.reduce(mean, reduction="mean"))

    # ----------------------------------------------------------------------------- state
    def _adapter_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.accelerator.unwrap_model(self.model))

    def _save_checkpoint(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self._status("checkpointing", f"saving checkpoint at step {step}")
            t0 = time.perf_counter()
            out = self.config.output
            path = ckpt.save_checkpoint(
                self.run_dir,
                step,
                self._adapter_state(),
                self.optimizer.state_dict() if out.save_optimizer_state else None,
                self.lr_scheduler.state_dict(),
                {"total_steps": self.config.training.max_steps, "variant": self.variant},
                keep=out.max_checkpoints,
            )
            if self.reporter is not None:
                self.reporter.record_overhead("checkpoint", time.perf_counter() - t0)
            self._status("training", "", last_checkpoint=str(path))
        self.accelerator.wait_for_everyone()

    def _restore(self, path: Path) -> int:
        from peft.utils import set_peft_model_state_dict

        state = ckpt.load_checkpoint(path)
        set_peft_model_state_dict(self.accelerator.unwrap_model(self.model), state["adapter"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            log.warning(
                "checkpoint %s has no optimizer state: the optimizer restarts (output.save_optimizer_state)",
                path,
            )
        self.lr_scheduler.load_state_dict(state["scheduler"])
        step = int(state["meta"]["step"])
        log.info("resumed from %s at step %d", path, step)
        return step

    # ----------------------------------------------------------------------------- main
    def run(self) -> int:
        cfg = self.config
        acc = self._make_accelerator()
        is_main = acc.is_main_process
        lock = None
        archived = None
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not os.environ.get(LOCK_HELD_ENV):
                lock = runs.RunLock(self.run_dir)
                lock.acquire()  # RunBusyError reaches the CLI, which explains it
            (self.run_dir / runs.STOP_FILE).unlink(missing_ok=True)
            archived = None if self.resume else runs.archive_previous(self.run_dir)
        setup_logging(self.run_dir if is_main else None, is_main)
        if is_main and archived is not None:
            log.info("the earlier run in %s was moved to %s", self.run_dir, archived)
        resume_path = ckpt.resolve_resume(self.run_dir, self.resume) if self.resume else None
        if is_main:
            save_config(cfg, self.run_dir / runs.CONFIG_FILE)
            self.reporter = RunReporter(self.run_dir, cfg, cfg.training.max_steps)
            self._status("loading", "resolving model and dataset")
            hold_point("loading", self.run_dir)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            start = self.prepare(resume_path)
            return self._loop(start, self.sampler)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                self._status("stopped", "interrupted")
            else:
                self._status("failed", f"{type(e).__name__}: {e}", error=str(e))
            raise
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self.reporter is not None:
                self.reporter.close()
            if lock is not None:
                lock.release()

    def prepare(self, resume_path: Path | None = None) -> int:
        """Everything before the first step: model, data caches, adapter, optimizer. Returns the start step."""
        from flux2_lora.training.sampling import Sampler

        cfg = self.config
        if not hasattr(self, "accelerator"):
            self._make_accelerator()
        acc = self.accelerator
        log.info("training on %s (%s) with %d processes", self.device, self.dtype, acc.num_processes)
        model_path, self.variant, self.arch = resolve_model_path(cfg.model)
        self.items = self._load_data()
        self._cache(model_path, self.variant, self.items)
        trainable = self._build_model(model_path, self.variant, self.arch)
        self.optimizer = build_optimizer(cfg.training, self.lora_params)
        self.lr_scheduler = build_scheduler(cfg.training, self.optimizer)
        self.model, self.optimizer = acc.prepare(self.transformer, self.optimizer)
        self.schedule = SampleSchedule(
            [i.repeats * cfg.dataset.repeats for i in self.items],
            cfg.training.seed,
            cfg.training.batch_size,
            [i.bucket for i in self.items] if cfg.dataset.bucketing else None,
        )
        start = self._restore(resume_path) if resume_path else 0
        self.sampler = Sampler(self, model_path)
        if self.reporter:
            self.reporter.status.extra.update(
                {
                    "trainable_params": trainable,
                    "variant": self.variant,
                    "device": str(self.device),
                    "dtype": str(self.dtype),
                    "num_processes": acc.num_processes,
                }
            )
            self.reporter.status.step = start
            self.reporter.open_trackers()
        return start

    def _loop(self, start: int, sampler: Any) -> int:
        from tqdm.auto import tqdm

        cfg = self.config
        acc = self.accelerator
        total = cfg.training.max_steps
        self._status("training", f"training steps {start + 1}–{total}")
        bar = tqdm(
            total=total, initial=start, disable=not acc.is_main_process, dynamic_ncols=True, unit="step"
        )
        window: list[float] = []
        self.model.train()
        step = start
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            loss = self._train_step(step)
            window.append(loss)
            lr = self.lr_scheduler.get_last_lr()[0]
            if self.reporter:
                self.reporter.step_done(step, time.perf_counter() - t0)
                bar.set_postfix(
                    loss=f"{loss:.4f}", lr=f"{lr:.2e}", eta=f"{self.reporter.status.eta_seconds:.0f}s"
                )
            bar.update(1)
            if self.reporter and (step % cfg.logging.log_every == 0 or step == total):
                self.reporter.log_metrics(step, sum(window) / len(window), lr)
                self.reporter.set_state("training")
                window = []
            if step == 3:
                hold_point("step", self.run_dir)
            stop = self._stop_requested()
            stop = bool(acc.reduce(torch.tensor(float(stop), device=self.device), reduction="sum").item() > 0)
            every = cfg.output.checkpoint_every
            if (every and step % every == 0) or (stop and step < total):
                self._save_checkpoint(step)
            val = cfg.validation
            if val.enabled and step % val.every_n_steps == 0 and step < total and not stop:
                sampler.sample(step)
            if stop:
                bar.close()
                self._status("stopped", f"stopped at step {step}; resume with --resume latest")
                return 0
        bar.close()
        return self._finish(step, sampler)

    def _finish(self, step: int, sampler: Any) -> int:
        from flux2_lora.training.export import save_comfyui_lora, save_diffusers_lora
        from flux2_lora.training.model import pipeline_class

        cfg = self.config
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._status("checkpointing", "writing the final LoRA")
            state = self._adapter_state()
            out_dtype = (
                torch.float32 if cfg.output.save_dtype == "auto" else getattr(torch, cfg.output.save_dtype)
            )
            peft_cfg = acc.unwrap_model(self.model).peft_config["default"]
            meta = peft_cfg.to_dict()
            final = save_diffusers_lora(self.run_dir, pipeline_class(self.variant), state, meta, out_dtype)
            if cfg.output.export_comfyui:
                if cfg.lora.use_dora:
                    log.warning("output.export_comfyui: DoRA magnitudes have no ComfyUI FLUX.2 key; skipped")
                else:
                    save_comfyui_lora(self.run_dir, state, cfg.lora.alpha / cfg.lora.rank, out_dtype)
            if cfg.validation.enabled:
                sampler._sample_main(step)  # main only; the barrier below holds the others
            if self.reporter is not None:
                self.reporter.record_peaks()
                self.reporter.status.extra["estimate"] = _estimate_summary(cfg, acc.num_processes)
            self._status(
                "finished", f"finished {step} steps; LoRA at {final}", final_lora=str(final), step=step
            )
        acc.wait_for_everyone()
        return 0


def _estimate_summary(config: TrainConfig, num_processes: int) -> dict[str, Any] | None:
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
    keys = ("allocated_peak_gib", "total_gib", "host_peak_gib", "host_gib")
    return {k: report[k] for k in keys if k in report}
