"""Validation samples during training: the variant's own diffusers pipeline with the live LoRA."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from flux2_lora.config import ValidationSection
from flux2_lora.hooks import hold_point
from flux2_lora.training.batches import PromptSource

log = logging.getLogger("flux2_lora")


@dataclass
class SampleSettings:
    """What a validation pass draws: prompts, size, seed and the pipeline's sampling settings."""

    validation: ValidationSection
    prompts: list[str]
    resolution: int
    seed: int
    uses_cfg: bool  # [klein] base models take real classifier-free guidance (an empty-prompt pass)


class Sampler:
    """Draws the validation images with ``pipe`` (text encoder, VAE, scheduler) and a given transformer."""

    def __init__(
        self,
        pipe: Any,
        prompts: PromptSource,
        settings: SampleSettings,
        device: torch.device,
        dtype: torch.dtype,
        autocast: Callable[[], Any] = contextlib.nullcontext,
    ):
        self.pipe = pipe
        self.prompts = prompts
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.autocast = autocast

    @torch.no_grad()
    def sample(
        self,
        transformer: torch.nn.Module,
        on_image: Callable[[int, str, Any], None] | None = None,
        hold_dir: Any = None,
    ) -> list[Any]:
        """Every prompt × num_samples, seeded per sample index; ``on_image(index, prompt, image)`` is
        called as each image is ready. Returns the images."""
        if hold_dir is not None:
            hold_point("sampling", hold_dir)
        s = self.settings
        val = s.validation
        pipe = self.pipe
        pipe.register_modules(transformer=transformer)
        pipe.set_progress_bar_config(disable=True)
        vae_device = pipe.vae.device
        pipe.vae.to(self.device)
        was_training = transformer.training
        transformer.eval()
        images: list[Any] = []
        t0 = time.perf_counter()
        try:
            for prompt in s.prompts:
                embeds = self.prompts.get([prompt]).to(self.device, self.dtype)
                kwargs: dict[str, Any] = {}
                if s.uses_cfg:
                    kwargs["negative_prompt_embeds"] = self.prompts.get([""]).to(self.device, self.dtype)
                for k in range(val.num_samples):
                    gen = torch.Generator("cpu").manual_seed(s.seed + k)
                    with self.autocast():
                        image = pipe(
                            prompt_embeds=embeds,
                            height=s.resolution,
                            width=s.resolution,
                            num_inference_steps=val.num_inference_steps,
                            guidance_scale=val.guidance_scale,
                            generator=gen,
                            **kwargs,
                        ).images[0]
                    if on_image is not None:
                        on_image(len(images), prompt, image)
                    images.append(image)
        finally:
            if was_training:
                transformer.train()
            pipe.vae.to(vae_device)
            pipe.register_modules(transformer=None)
        log.info("validation: %d image(s) in %.1fs", len(images), time.perf_counter() - t0)
        return images
