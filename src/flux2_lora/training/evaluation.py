"""A deterministic eval loss: held-out images (an edit run's: held-out pairs) scored at fixed noise levels with fixed noise.

Which images are held out, their crops, the noise and the σ grid depend only on the dataset and the
``validation.eval_*`` settings, never on the training seed or settings: two runs on the same dataset
with the same eval settings score the same inputs, so their eval losses are comparable (and equal
before training, when the LoRA's up-projection is still zero).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flux2_lora.config import TrainConfig
from flux2_lora.training.batches import (
    Item,
    LatentSource,
    PromptSource,
    derive_seed,
    pack,
    pack_references,
    text_ids_for,
    to_device_stacked,
)
from flux2_lora.training.flow import flow_matching_loss

_HOLD_OUT = 11  # derive_seed streams of the eval set (the trainer's own use 1–10)
_NOISE = 12


class EvalError(ValueError):
    """An eval setting that cannot work with this dataset; the message names the field."""


def split_held_out(items: list[Item], root: Path, config: TrainConfig) -> tuple[list[Item], list[Item]]:
    """(training items, held-out items): ``validation.eval_images`` chosen by ``eval_seed`` among the
    items sorted by path, so the choice does not depend on scan order or the training seed."""
    n = config.validation.eval_images
    if n == 0 or config.validation.eval_folder.strip():
        return items, []
    if n >= len(items):
        raise EvalError(
            f"validation.eval_images: {n} held-out images would leave none of the {len(items)} to train on"
        )
    order = sorted(range(len(items)), key=lambda i: str(items[i].path.relative_to(root)))
    chosen = set(random.Random(derive_seed(config.validation.eval_seed, _HOLD_OUT)).sample(order, n))
    return [it for i, it in enumerate(items) if i not in chosen], [items[i] for i in sorted(chosen)]


def eval_config(config: TrainConfig) -> TrainConfig:
    """The inputs of the eval set are fixed: centre crops, no flips, crops seeded by eval_seed."""
    dataset = config.dataset.model_copy(update={"center_crop": True, "random_flip": False})
    training = config.training.model_copy(update={"seed": config.validation.eval_seed})
    return config.model_copy(update={"dataset": dataset, "training": training})


class EvalSet:
    """The held-out images' latents and captions, and how to score a model on them."""

    def __init__(self, items: list[Item], config: TrainConfig, vae: Any, device: torch.device, pin: bool):
        self.items = items
        self.config = config
        self.latents = LatentSource(items, eval_config(config), vae, device, pin=pin)

    @property
    def captions(self) -> list[str]:
        return [i.caption for i in self.items]

    def fill_cache(self) -> None:
        self.latents.fill_cache()

    @torch.no_grad()
    def loss(
        self,
        model: torch.nn.Module,
        prompts: PromptSource,
        device: torch.device,
        dtype: torch.dtype,
        guidance_embeds: bool,
        autocast: Callable[[], Any],
    ) -> float:
        """Mean flow-matching loss over every (image, σ), one forward each (the sampling phase's memory)."""
        val, t = self.config.validation, self.config.training
        was_training = model.training
        model.eval()  # LoRA dropout off
        total, count = 0.0, 0
        try:
            for i in range(len(self.items)):
                x0 = to_device_stacked([self.latents.get(i, False, 0)], device, dtype)
                packed, ids = pack(x0)
                refs = pack_references([self.latents.references(i, False)], device, dtype)
                embeds = prompts.batch([self.items[i].caption], device, dtype)
                for j, sigma in enumerate(val.eval_sigmas):
                    gen = torch.Generator().manual_seed(derive_seed(val.eval_seed, _NOISE, i, j))
                    noise = torch.randn(packed.shape, generator=gen, dtype=torch.float32).to(device)
                    guidance = None
                    if guidance_embeds:
                        guidance = torch.full((1,), t.guidance_scale, device=device, dtype=torch.float32)
                    with autocast():
                        loss = flow_matching_loss(
                            model,
                            latents=packed,
                            latent_ids=ids,
                            prompt_embeds=embeds,
                            text_ids=text_ids_for(embeds),
                            sigmas=torch.tensor([sigma], device=device),
                            noise=noise,
                            guidance=guidance,
                            reference_latents=refs[0] if refs else None,
                            reference_ids=refs[1] if refs else None,
                        )
                    total += float(loss)
                    count += 1
        finally:
            if was_training:
                model.train()
        return total / count


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0
