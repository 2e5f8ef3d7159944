"""The LoRA trainer: ``setup()`` (named builders in dependency order), then ``train()``.

Runs in its own process (the CLI, ``accelerate launch`` or the web UI's subprocess). The run directory's
life cycle (lock, logging, config, status, signals) belongs to :class:`~.session.RunSession`; the trainer
reports through the reporter and stop flag it is given; checkpoints and resume are
:class:`~.run_state.TrainingState`'s. ``train_step``, ``adapter_state`` and ``sample``
are public: the pre-flight and the benchmarks drive the trainer through them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, cast

import torch

from flux2_lora import runs
from flux2_lora.config import TrainConfig
from flux2_lora.hooks import hold_point
from flux2_lora.training import distributed as dist_util
from flux2_lora.training.batches import (
    Item,
    LatentSource,
    PromptSource,
    SampleSchedule,
    derive_seed,
    pack,
    pack_references,
    text_ids_for,
    to_device_stacked,
)
from flux2_lora.training.block_swap import BlockSwap, setup_block_swap
from flux2_lora.training.ema import AdapterEMA, make_ema
from flux2_lora.training.evaluation import EvalSet, timed
from flux2_lora.training.flow import draw_sigmas_and_noise, flow_matching_loss
from flux2_lora.training.hardware import (
    apply_kernels,
    make_accelerator,
    resolve_dtype,
)
from flux2_lora.training.inputs import load_items, training_captions
from flux2_lora.training.masks import MaskSource
from flux2_lora.training.mix import MixedSchedule, build_schedule
from flux2_lora.training.model import (
    free_memory,
    inject_lora,
    is_quantized_module,
    load_pipeline_without_transformer,
    load_transformer,
    materialized_bytes,
    pipeline_class,
    resolve_model_path,
    resolve_text_encoder_layers,
    transformer_on_meta,
)
from flux2_lora.training.optim import build_optimizer, build_scheduler
from flux2_lora.training.outcome import RunOutcome, TrainingDiverged, first_non_finite
from flux2_lora.training.preservation import regularization_inputs
from flux2_lora.training.run_state import TrainingState
from flux2_lora.training.sampling import Sampler, SampleSettings
from flux2_lora.training.session import LOCK_HELD_ENV, RunSession, StopFlag
from flux2_lora.training.tracking import RunReporter, estimate_summary
from flux2_lora.variants import TransformerArch, get_variant

log = logging.getLogger("flux2_lora")
__all__ = ["LOCK_HELD_ENV", "Trainer", "make_accelerator", "run_training"]


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        accelerator: Any = None,
        *,
        reporter: RunReporter | None = None,
        stop: StopFlag | None = None,
    ):
        self.config = config
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self.device: torch.device = self.accelerator.device
        self.dtype = resolve_dtype(config.model.dtype, self.device)
        self.run_dir = Path(config.output.dir).expanduser().resolve()
        self.reporter = reporter
        self.stop = stop or StopFlag(None)
        # Built by setup(), in this order.
        self.model_path = ""
        self.variant = ""
        self.arch: TransformerArch | None = None
        self.items: list[Item] = []
        self.pipe: Any = None
        self.prompts: PromptSource | None = None
        self.latents: LatentSource | None = None
        self.masks: MaskSource | None = None  # dataset.mask_path
        self.transformer: Any = None
        self.lora_params: list[torch.nn.Parameter] = []
        self.model: Any = None  # the transformer as accelerate prepared it
        self.optimizer: Any = None
        self.lr_scheduler: Any = None
        self.schedule: SampleSchedule | MixedSchedule | None = None  # several datasets: mixed by weight
        self.sampler: Sampler | None = None
        self.eval_set: EvalSet | None = None
        self.state: TrainingState | None = None  # checkpoints and resume, once the model is prepared
        self.ema: AdapterEMA | None = None  # training.ema_decay > 0, on the main process
        self.swap: BlockSwap | None = None  # memory.blocks_to_swap
        # FSDP shards the transformer over the processes: its forward passes (samples, the eval loss) and
        # its state (checkpoints, the LoRA) then need every process.
        self.fsdp = dist_util.uses_fsdp(config, self.accelerator.num_processes)

    def _status(self, state: str, message: str = "", **fields: Any) -> None:
        if self.reporter is not None:
            self.reporter.set_state(state, message, **fields)

    # ----------------------------------------------------------------------------- setup
    def setup(self, resume: str | None = None) -> int:
        """Model path, data, cached inputs, transformer + LoRA, optimizer, schedule; returns the start
        step. ``resume`` ('latest' or a checkpoint folder) is resolved once the adapter exists, so a
        checkpoint of another rank or other target layers is skipped (latest) or refused (a folder)."""
        cfg = self.config
        acc = self.accelerator
        log.info("training on %s (%s) with %d processes", self.device, self.dtype, acc.num_processes)
        self.model_path, self.variant, self.arch = resolve_model_path(cfg.model)
        self.items, eval_items = load_items(self.config, self.run_dir)
        # Captions and images are encoded before the transformer is loaded: the text encoder (24B for
        # [dev]) and the transformer never share the GPU.
        self.pipe, self.prompts, self.latents, self.eval_set = self._setup_inputs(eval_items)
        self.transformer, self.lora_params = self._setup_model()
        self.optimizer, self.lr_scheduler = self._setup_optimizer()
        if self.fsdp:  # sharded already: accelerate would wrap it in DDP
            self.model, self.optimizer = self.transformer, acc.prepare(self.optimizer)
        elif self.swap is not None:  # placed by the swap: moving it whole would pull every block in
            self.model = acc.prepare_model(self.transformer, device_placement=False)
            self.optimizer = acc.prepare(self.optimizer)
        else:
            self.model, self.optimizer = acc.prepare(self.transformer, self.optimizer)
        self.state = TrainingState(
            acc, self.model, self.optimizer, self.lr_scheduler, self.run_dir, cfg, self.variant, self.reporter
        )
        self.ema = make_ema(cfg.training, acc.unwrap_model(self.model), self.device, acc.is_main_process)
        self.state.ema = self.ema  # in checkpoints, restored on resume
        self.schedule = build_schedule(self.items, cfg, self._batch_groups())
        self.sampler = self._setup_sampler()
        start = 0
        # The main process decides (another machine may not see the run directory, nor resolve 'auto').
        resume = dist_util.broadcast_object(resume)
        if resume:
            start = self.state.resume(resume)
        if self.reporter is not None:
            self.reporter.status.extra.update(
                {
                    "trainable_params": sum(p.numel() for p in self.lora_params),
                    "variant": self.variant,
                    "device": str(self.device),
                    "dtype": str(self.dtype),
                    "num_processes": acc.num_processes,
                }
            )
            self.reporter.status.step = start
            self.reporter.open_trackers()
        return start

    def _batch_groups(self) -> list[Any] | None:
        """What the samples of one batch share: the bucket (build_items gives every item one when
        bucketing) and, in an edit run, the references' sizes too; None: any item batches with any."""
        if any(i.references for i in self.items):
            return [i.group for i in self.items]
        if self.config.dataset.bucketing:
            return cast("list[Any]", [i.bucket for i in self.items])
        return None

    def validation_prompts(self) -> list[str]:
        # An edit run's default prompt is its first pair's instruction, drawn with that pair's references.
        first = next((i for i in self.items if i.references), self.items[0])
        return self.config.validation.prompts or [first.caption or ""]

    def validation_references(self) -> list[list[Path]]:
        """Each validation prompt's reference images: validation.references (paths as given: absolute,
        or relative to the working directory), else the first pair's references for every prompt."""
        refs = self.config.validation.references
        if refs:
            return [[Path(p).expanduser() for p in group] for group in refs]
        first = next((i.references for i in self.items if i.references), ())
        return [list(first) for _ in self.validation_prompts()] if first else []

    def uses_cfg(self) -> bool:
        # [klein] base models take real classifier-free guidance (a second, empty-prompt pass).
        return (
            get_variant(self.variant).pipeline_class == "Flux2KleinPipeline"
            and self.config.validation.guidance_scale > 1
        )

    def _setup_inputs(self, eval_items: list[Item]) -> tuple[Any, PromptSource, LatentSource, EvalSet | None]:
        """The pipeline's encoders, the prompt / latent sources (filled now when cached) and the eval
        set's latents (always encoded now: a few images)."""
        mem, val = self.config.memory, self.config.validation
        self._status("caching", "encoding captions and images")
        # cpu_offload: the text encoder (24B for [dev]) encodes on the CPU: slow, but no GPU memory at all.
        te_device = torch.device("cpu") if mem.cpu_offload else self.device
        te_quant = mem.text_encoder_quantization
        # Several processes with cached embeddings: rank 0 alone loads the encoder and encodes every caption
        # (prompt_share). Without the cache each process encodes its own batches' captions at every step.
        shared = self.accelerator.num_processes > 1 and mem.cache_text_embeddings
        encoder_here = self.accelerator.is_main_process or not shared
        pipe = load_pipeline_without_transformer(
            self.model_path, self.variant, self.dtype, te_quant, te_device, with_text_encoder=encoder_here
        )
        dist_util.note_rank("text_encoder_loaded", pipe.text_encoder is not None)
        if mem.vae_slicing:
            pipe.vae.enable_slicing()
        if mem.vae_tiling:
            pipe.vae.enable_tiling()
        if te_quant == "none" and encoder_here:  # a quantized encoder was placed by its loader
            pipe.text_encoder.to(te_device)
        pipe.vae.to(self.device)
        pin = self.device.type == "cuda"
        max_len = get_variant(self.variant).text_encoder.max_sequence_length
        layers = resolve_text_encoder_layers(self.config.model, self.model_path, self.variant)
        if mem.cache_to_disk:  # <run>/.cache: encoded once, read back per step and on resume
            from flux2_lora.training.disk_cache import DiskLatentSource, DiskPromptSource, run_cache

            disk = run_cache(self.run_dir, self.model_path, self.variant, self.dtype)
            prompts: PromptSource = DiskPromptSource(
                disk, pipe, te_device, max_len, text_encoder_out_layers=layers, quantization=te_quant
            )
            latents: LatentSource = DiskLatentSource(disk, self.items, self.config, pipe.vae, self.device)
        else:
            prompts = PromptSource(pipe, te_device, max_len, text_encoder_out_layers=layers, pin=pin)
            latents = LatentSource(self.items, self.config, pipe.vae, self.device, pin=pin)
        if any(i.mask is not None for i in self.items) or self.config.dataset.mask_path.strip():
            self.masks = MaskSource(self.items, self.config, latents.targets)
        eval_set = EvalSet(eval_items, self.config, pipe.vae, self.device, pin) if eval_items else None
        extra = self.validation_prompts() if val.enabled else []
        if eval_set is not None:
            extra = [*extra, *eval_set.captions]
            eval_set.fill_cache()
        if val.enabled and self.uses_cfg():
            extra = [*extra, ""]
        if mem.cache_text_embeddings:
            captions = training_captions(self.items, self.config) + extra
            if shared:
                from flux2_lora.training.prompt_share import share_prompt_cache

                share_prompt_cache(prompts, captions, self.accelerator.is_main_process, self.device)
            else:
                prompts.fill_cache(captions)
            self._note_prompts(prompts, captions)
            pipe.text_encoder = None  # the largest component is not needed again
        else:
            prompts.fill_cache(extra)
            if mem.cpu_offload:
                self._offload(pipe.text_encoder)
        if mem.cache_latents:
            latents.fill_cache()
            self._offload(pipe.vae)
        else:
            latents.fill_references()  # fixed centre crops: encoded once even when targets are not
            if mem.cpu_offload:
                self._offload(pipe.vae)
        free_memory()
        return pipe, prompts, latents, eval_set

    def _note_prompts(self, prompts: PromptSource, captions: list[str]) -> None:
        """Each process's embeddings digest in its ranks/ record (several processes only)."""
        if self.accelerator.num_processes > 1:
            from flux2_lora.training.prompt_share import cache_digest

            dist_util.note_rank("prompt_digest", cache_digest(prompts, captions))

    def _offload(self, module: Any) -> None:
        """Move a frozen component off the GPU between uses (no-op when training on CPU)."""
        if module is not None and self.device.type != "cpu" and not is_quantized_module(module):
            module.to("cpu")  # a quantized encoder stays (bitsandbytes' layers do not move)

    def _setup_model(self) -> tuple[Any, list[torch.nn.Parameter]]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        cfg = self.config
        assert self.arch is not None
        self._status("loading", "loading the transformer")
        quant = cfg.memory.quantization
        # FSDP: rank 0 loads on the CPU (moved to the GPU block by block as it is sharded); the others build
        # the same modules on the meta device and receive their shards from it, so a machine holds one copy.
        on_meta = self.fsdp and not self.accelerator.is_main_process
        if on_meta:
            transformer = transformer_on_meta(self.model_path, self.dtype)
        else:
            load_device = torch.device("cpu") if self.fsdp else self.device
            transformer = load_transformer(self.model_path, self.dtype, quant, load_device)
        dist_util.note_rank("transformer_loaded_bytes", materialized_bytes(transformer))
        torch.manual_seed(derive_seed(cfg.training.seed, 3))  # LoRA init (rank 0's is broadcast under FSDP)
        trainable = inject_lora(transformer, cfg.lora, self.arch)
        if cfg.memory.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if cfg.memory.blocks_to_swap:
            assert self.arch is not None
            label = get_variant(self.variant).label
            self.swap = setup_block_swap(
                transformer, cfg.memory.blocks_to_swap, self.arch, label, self.accelerator
            )
        elif self.fsdp:
            dist_util.shard_from_rank0(transformer, cfg, self.device, self.dtype)
        elif quant != "nf4" or self.device.type != "cuda":  # bnb models are placed by their loader
            transformer.to(self.device)
        apply_kernels(transformer, cfg.performance, self.device)
        layers = sum(1 for m in transformer.modules() if isinstance(m, BaseTunerLayer))  # any lora.type
        log.info("LoRA (%s): %s trainable parameters on %d layers", cfg.lora.type, f"{trainable:,}", layers)
        return transformer, [p for p in transformer.parameters() if p.requires_grad]

    def _setup_optimizer(self) -> tuple[Any, Any]:
        optimizer = build_optimizer(self.config.training, self.lora_params)
        return optimizer, build_scheduler(self.config.training, optimizer)

    def _setup_sampler(self) -> Sampler:
        cfg = self.config
        assert self.prompts is not None
        settings = SampleSettings(
            validation=cfg.validation,
            prompts=self.validation_prompts(),
            resolution=cfg.dataset.resolution,
            seed=cfg.training.seed,
            uses_cfg=self.uses_cfg(),
            references=self.validation_references(),
            reference_max_pixels=cfg.dataset.reference_max_pixels,
        )
        if cfg.validation.enabled:
            from flux2_lora.training.sampling import reference_images

            for group in settings.references:  # a missing or broken file fails now, not at the first sample
                reference_images(group, settings.reference_max_pixels)
        return Sampler(self.pipe, self.prompts, settings, self.device, self.dtype, self.accelerator.autocast)

    # ----------------------------------------------------------------------------- one step
    def micro_batch(self, step: int, micro: int) -> dict[str, Any]:
        """The inputs of one micro-batch: a pure function of (seed, step, micro-step, rank)."""
        t, ds = self.config.training, self.config.dataset
        acc = self.accelerator
        assert self.schedule is not None and self.latents is not None and self.prompts is not None
        assert self.arch is not None
        pairs = self.schedule.micro_batch(
            step, micro, acc.process_index, acc.num_processes, t.gradient_accumulation_steps
        )
        indices = [g for _, g in pairs]
        latents, captions, references, masks = [], [], [], []
        fixed_crop = bool(self.latents.cache) or ds.center_crop  # the latents' crop is the item's own
        for item, g in pairs:
            rng = torch.Generator().manual_seed(derive_seed(t.seed, 4, g))
            draws = torch.rand(3, generator=rng).tolist()  # flip, tag order, caption dropout
            flip = bool(ds.random_flip and draws[0] < 0.5)
            latents.append(self.latents.get(item, flip, derive_seed(t.seed, 5, g)))
            references.append(self.latents.references(item, flip))
            if self.masks is not None:
                masks.append(self.masks.weights(item, flip, derive_seed(t.seed, 5, g), fixed_crop))
            variants = self.items[item].variants
            caption = variants[int(draws[1] * len(variants))] if variants else self.items[item].caption
            it = self.items[item]
            dropout = ds.caption_dropout if it.caption_dropout is None else it.caption_dropout
            captions.append("" if draws[2] < dropout else caption)  # the instruction, for edits
        x0 = to_device_stacked(latents, self.device, self.dtype)
        packed, ids = pack(x0)
        refs = pack_references(references, self.device, self.dtype)
        sigmas, noise = draw_sigmas_and_noise(
            t, derive_seed(t.seed, 6, indices[0]), len(indices), packed.shape, self.device
        )
        embeds = self.prompts.batch(captions, self.device, self.dtype)
        guidance = None
        if self.arch.guidance_embeds:
            guidance = torch.full((len(indices),), t.guidance_scale, device=self.device, dtype=torch.float32)
        batch = {
            "latents": packed,
            "latent_ids": ids,
            "prompt_embeds": embeds,
            "text_ids": text_ids_for(embeds),
            "sigmas": sigmas.to(self.device, non_blocking=True),
            "noise": noise,
            "guidance": guidance,
            "dropout_seed": derive_seed(t.seed, 7, indices[0]),
        }
        if refs is not None:
            batch["reference_latents"], batch["reference_ids"] = refs
        if masks:
            batch["mask"] = torch.stack(masks).to(self.device, non_blocking=True)
        if self.items[pairs[0][0]].regularization:  # batches stay within one dataset
            batch["regularization"] = True  # training.preservation: popped by train_step
        return batch

    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step (all micro-batches); the mean loss as a 0-d tensor on the device, so the
        caller decides when to wait for the GPU (only when it logs)."""
        t = self.config.training
        acc = self.accelerator
        losses = []
        for micro in range(t.gradient_accumulation_steps):
            batch = self.micro_batch(step, micro)
            torch.manual_seed(batch.pop("dropout_seed"))  # LoRA dropout, reproducible per step
            regularization = batch.pop("regularization", False)
            if regularization:  # the base model's prediction (adapter off) as target, or a scaled loss
                with acc.autocast():
                    batch = regularization_inputs(t, acc.unwrap_model(self.model), batch, regularization)
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss = flow_matching_loss(self.model, weighting=t.loss_weighting, **batch)
                acc.backward(loss)
                if acc.sync_gradients and t.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.lora_params, t.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().float())
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(step)
        mean = torch.stack(losses).mean()
        return acc.reduce(mean, reduction="mean") if acc.num_processes > 1 else mean

    # ----------------------------------------------------------------------------- state
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The whole adapter by PEFT key (under FSDP a collective; the tensors land on the main process)."""
        assert self.state is not None, "setup() first"
        return self.state.adapter()

    def save_checkpoint(self, step: int) -> Path | None:
        """Every process gathers its share; the main one writes. Returns the checkpoint (main process)."""
        assert self.state is not None, "setup() first"
        return self.state.save(step)

    # ----------------------------------------------------------------------------- samples
    def sample(self, step: int) -> None:
        """Validation images at ``step``, drawn by the main process while the others wait (under FSDP
        every process runs the sharded transformer with it; only the main one keeps the images)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process or self.fsdp:
            self.draw_samples(step, record=acc.is_main_process)
        acc.wait_for_everyone()

    def draw_samples(self, step: int, record: bool = True) -> list[Any]:
        """The validation images of this process; ``record`` saves them to the run (and trackers)."""
        assert self.sampler is not None
        reporter = self.reporter if record else None
        self._status("sampling", f"validation samples at step {step}")
        t0 = time.perf_counter()

        refs = self.sampler.settings.references
        per_prompt = self.config.validation.num_samples

        def on_image(index: int, prompt: str, image: Any) -> None:
            if reporter is not None:
                n = index // per_prompt  # the sampler draws num_samples images per prompt, in order
                reporter.log_sample(step, index, prompt, image, refs[n] if n < len(refs) else ())

        model = self.accelerator.unwrap_model(self.model)
        ema = self.ema if self.config.validation.sample_ema else None
        with ema.applied() if ema is not None else contextlib.nullcontext():
            images = self.sampler.sample(model, on_image, self.run_dir if record else None)
        if reporter is not None:
            reporter.record_overhead("sampling", time.perf_counter() - t0)
        self._status("training", "")
        return images

    def evaluate(self, step: int) -> float | None:
        """The eval loss at ``step`` (main process; the others wait, or compute along under FSDP), logged
        to the run."""
        acc = self.accelerator
        if self.eval_set is None:
            return None
        acc.wait_for_everyone()
        value = None
        if acc.is_main_process or self.fsdp:
            assert self.prompts is not None and self.arch is not None
            self._status("evaluating", f"eval loss at step {step}")
            eval_set, prompts, guided = self.eval_set, self.prompts, self.arch.guidance_embeds
            model = acc.unwrap_model(self.model)
            value, seconds = timed(
                lambda: eval_set.loss(model, prompts, self.device, self.dtype, guided, acc.autocast)
            )
            log.info("eval loss at step %d: %.5f (%.1fs)", step, value, seconds)
            if self.reporter is not None:
                self.reporter.log_eval(step, value, seconds)
            self._status("training", "")
        acc.wait_for_everyone()
        return value

    # ----------------------------------------------------------------------------- the loop
    def record_ranks(self, step: int) -> None:
        """Every process's memory into ``ranks/`` (several processes only; a collective there)."""
        if self.accelerator.num_processes > 1:
            dist_util.record_ranks(self.run_dir, step, self.accelerator.is_main_process)

    def _stop_agreed(self) -> bool:
        """Every process stops at the same step: one rank's signal or stop file stops them all."""
        stop = self.stop.requested()
        if self.accelerator.num_processes == 1:
            return stop
        flag = torch.tensor(float(stop), device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _on_demand(self, step: int) -> None:
        """Sample now / save now, asked through the run folder: acted on after this step, acknowledged in
        the status. The main process reads the requests; every process acts on the same ones."""
        acc = self.accelerator
        asked = dist_util.broadcast_object(
            runs.on_demand_requests(self.run_dir) if acc.is_main_process else []
        )
        for kind in asked:
            if kind == "save":
                self.save_checkpoint(step)
                done = f"checkpoint-{step} saved (asked for)"
            elif not self.config.validation.enabled:  # its prompts were never encoded
                done = "sample now: this run samples nothing (validation.enabled is off in its config)"
            else:
                self.sample(step)
                done = f"sampled at step {step} (asked for)"
            if acc.is_main_process:
                runs.clear_on_demand(self.run_dir, kind)
                if self.reporter is not None:
                    acks = self.reporter.status.extra.setdefault("on_demand", {})
                    acks[kind] = {"step": step, "done_at": time.time(), "message": done}
                self._status("training", done)

    def _check_losses(self, window: list[torch.Tensor], step: int) -> None:
        """A NaN or infinite loss among the steps ending at ``step`` stops the run there (one wait for the
        GPU: called at checkpoints, whose weights must not be saved poisoned)."""
        if window:
            bad = first_non_finite(torch.stack(window).tolist(), step)
            if bad is not None:
                raise TrainingDiverged(bad[0], bad[1], runs.latest_checkpoint(self.run_dir))

    def train(self, start: int) -> RunOutcome:
        from tqdm.auto import tqdm

        cfg = self.config
        acc = self.accelerator
        total = cfg.training.max_steps
        if start < total:
            self._status("training", f"training steps {start + 1}–{total}")
        else:  # resumed from the last step's checkpoint (a stop there, or a failed LoRA write)
            self._status("training", f"all {total} steps trained: writing the final LoRA")
        if self.reporter is not None:
            self.reporter.end_gpu_phase("setup")  # loading and caching; training is measured from here
        # One ETA: the run's own (it counts sampling, evals and checkpoints), not tqdm's "<remaining" too.
        bar = tqdm(
            total=total,
            initial=start,
            disable=not acc.is_main_process,
            dynamic_ncols=True,
            unit="step",
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
        )
        window: list[torch.Tensor] = []
        self.model.train()
        if start == 0:
            self.evaluate(0)  # the baseline: every run on the same eval set starts from the same value
        step, stop = start, False
        checkpoint: Path | None = None
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            window.append(self.train_step(step))
            bar.update(1)
            if self.reporter is not None:
                self.reporter.step_done(step, time.perf_counter() - t0)
            if step % cfg.logging.log_every == 0 or step == total:
                losses = window
                loss = float(torch.stack(window).mean())  # the only wait for the GPU between logs
                lr = self.lr_scheduler.get_last_lr()[0]
                window = []
                self.record_ranks(step)
                if self.reporter is not None:
                    self.reporter.log_metrics(step, loss, lr)  # a NaN is written as null
                    if math.isfinite(loss):
                        self.reporter.set_state("training")
                    eta = self.reporter.status.eta_seconds or 0
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", eta=f"{eta:.0f}s")
                if not math.isfinite(loss):
                    bar.close()
                    bad = first_non_finite(torch.stack(losses).tolist(), step) or (step, loss)
                    raise TrainingDiverged(*bad, runs.latest_checkpoint(self.run_dir))
            hold_point("step", self.run_dir)
            stop = self._stop_agreed()
            if stop and step == total:
                break  # the last step is trained: finish() writes its checkpoint and the LoRA
            every = cfg.output.checkpoint_every
            if (every and step % every == 0) or stop:  # a stop always saves the step it stopped at
                self._check_losses(window, step)
                checkpoint = self.save_checkpoint(step)
            if stop:
                bar.close()
                self.stop.acknowledge()
                self._status(
                    "stopped",
                    f"stopped at step {step}; checkpoint-{step} saved: press Resume (or --resume latest)",
                )
                return RunOutcome("stopped", step, total, checkpoint=checkpoint)
            if step < total:
                self._on_demand(step)
            val = cfg.validation
            if val.enabled and step % val.every_n_steps == 0 and step < total:
                self.sample(step)
            if step % val.eval_every == 0 and step < total:
                self.evaluate(step)
        bar.close()
        self._check_losses(window, step)
        return self.finish(step, stopping=stop)

    def _write_card(self) -> None:
        """README.md in the Hub's model-card format; the LoRA is written already, so a failure here is a
        warning, not a failed run."""
        from flux2_lora.model_card import CardError, write_card

        try:
            write_card(self.run_dir)
        except (CardError, OSError) as e:
            log.warning("the model card (README.md) was not written: %s", e)

    def finish(self, step: int, stopping: bool = False) -> RunOutcome:
        """A resumable checkpoint, then the LoRA files, the last samples (skipped when a stop came
        during the last step: the LoRA is what it asked to keep) and the measured peaks."""
        from flux2_lora.training.export import write_final_lora

        cfg = self.config
        acc = self.accelerator
        self.evaluate(step)
        last = runs.latest_checkpoint(self.run_dir)
        # Decided by the main process: the others may not see the run directory.
        if dist_util.broadcast_object(last is None or last.name != f"{runs.CHECKPOINT_PREFIX}{step}"):
            # Written before the LoRA, so a failed final write (a full disk) loses nothing.
            self.save_checkpoint(step)
        acc.wait_for_everyone()
        if acc.is_main_process and self.reporter is not None:
            self.reporter.end_gpu_phase("training")
        state = self.adapter_state()  # under FSDP every process takes part in gathering it
        final = resumable = None
        if acc.is_main_process:
            self._status("checkpointing", "writing the final LoRA")
            out_dtype = (
                self.dtype if cfg.output.save_dtype == "auto" else getattr(torch, cfg.output.save_dtype)
            )
            meta = acc.unwrap_model(self.model).peft_config["default"].to_dict()
            resumable = runs.latest_checkpoint(self.run_dir)
            ema = self.ema.state_dict() if self.ema is not None else None
            final = write_final_lora(
                self.run_dir, pipeline_class(self.variant), state, meta, cfg, out_dtype, resumable, ema
            )
        if cfg.validation.enabled and not stopping and (acc.is_main_process or self.fsdp):
            finals = self.draw_samples(step, record=acc.is_main_process)  # the barrier below holds the others
            if self.variant == "demo" and acc.num_processes == 1 and self.sampler is not None:
                from flux2_lora.training.before_after import demo_before_after

                grid = demo_before_after(self.sampler, acc.unwrap_model(self.model), self.run_dir, finals)
                log.info("before/after (LoRA scale 0 | 1, same prompts and seeds): %s", grid)
        self.record_ranks(step)
        if acc.is_main_process:
            if self.reporter is not None:
                self.reporter.record_peaks("sampling" if cfg.validation.enabled else "export")
                self.reporter.status.extra["estimate"] = estimate_summary(cfg, acc.num_processes)
            note = " (stopped during the last step: no final samples)" if stopping else ""
            self._status(
                "finished", f"finished {step} steps{note}; LoRA at {final}", final_lora=str(final), step=step
            )
            self._write_card()
        if stopping or self.stop.requested():
            self.stop.acknowledge()  # acted on (the LoRA is written): it must not stop the next run
        acc.wait_for_everyone()
        return RunOutcome("finished", step, cfg.training.max_steps, lora=final, checkpoint=resumable)


def run_training(config: TrainConfig, resume: str | None = None) -> RunOutcome:
    """Train in this process, inside the run directory's session (what ``flux2-lora train`` runs).

    Returns how the run ended (finished, or stopped with a checkpoint); a failure raises, its reason
    recorded in status.json."""
    accelerator = make_accelerator(config)
    with RunSession(config, resume, accelerator.is_main_process) as session:
        done = dist_util.broadcast_object(session.finished)  # `--resume latest` on a finished run
        if done is not None:
            return cast("RunOutcome", done)
        trainer = Trainer(config, accelerator, reporter=session.reporter, stop=session.stop)
        start = trainer.setup(resume)
        session.started()  # a resume was accepted: from here on a failure is this run's to record
        return trainer.train(start)
