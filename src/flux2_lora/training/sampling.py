"""Validation samples during training: the variant's own diffusers pipeline with the live LoRA."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch

from flux2_lora.hooks import hold_point

if TYPE_CHECKING:
    from flux2_lora.training.trainer import Trainer

log = logging.getLogger("flux2_lora")


class Sampler:
    def __init__(self, trainer: Trainer, model_path: str):
        self.trainer = trainer
        self.model_path = model_path

    @torch.no_grad()
    def sample(self, step: int) -> None:
        tr = self.trainer
        acc = tr.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._sample_main(step)
        acc.wait_for_everyone()

    def _sample_main(self, step: int) -> None:
        tr = self.trainer
        cfg = tr.config
        val = cfg.validation
        tr._status("sampling", f"validation samples at step {step}")
        hold_point("sampling", tr.run_dir)
        t0 = time.perf_counter()
        pipe = tr.pipe_parts
        transformer = tr.accelerator.unwrap_model(tr.model)
        pipe.register_modules(transformer=transformer)
        pipe.set_progress_bar_config(disable=True)
        vae_device = pipe.vae.device
        pipe.vae.to(tr.device)
        was_training = transformer.training
        transformer.eval()
        prompts = tr.validation_prompts()
        cfg_pass = tr._uses_cfg(tr.variant)
        index = 0
        try:
            for prompt in prompts:
                embeds = tr.prompts.get([prompt]).to(tr.device, tr.dtype)
                kwargs: dict[str, Any] = {}
                if cfg_pass:
                    kwargs["negative_prompt_embeds"] = tr.prompts.get([""]).to(tr.device, tr.dtype)
                for k in range(val.num_samples):
                    gen = torch.Generator("cpu").manual_seed(cfg.training.seed + k)
                    with tr.accelerator.autocast():
                        image = pipe(
                            prompt_embeds=embeds,
                            height=cfg.dataset.resolution,
                            width=cfg.dataset.resolution,
                            num_inference_steps=val.num_inference_steps,
                            guidance_scale=val.guidance_scale,
                            generator=gen,
                            **kwargs,
                        ).images[0]
                    if tr.reporter is not None:
                        tr.reporter.log_sample(step, index, prompt, image)
                    index += 1
        finally:
            if was_training:
                transformer.train()
            pipe.vae.to(vae_device)
            pipe.register_modules(transformer=None)
        elapsed = time.perf_counter() - t0
        log.info("validation: %d image(s) at step %d in %.1fs", index, step, elapsed)
        if tr.reporter is not None:
            tr.reporter.record_overhead("sampling", elapsed)
        tr._status("training", "")
