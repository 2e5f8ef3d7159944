"""Validation samples during training: the variant's own diffusers pipeline with the live LoRA."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
    # Edit LoRAs: each prompt's reference images (one list per prompt; [] or missing: text-to-image).
    references: list[list[Path]] = field(default_factory=list)
    reference_max_pixels: int = 0


def reference_images(paths: list[Path], max_pixels: int = 0) -> list[Any]:
    """The PIL images the pipeline's ``image=`` gets: oriented, RGB, at the size they train at."""
    import random
    import warnings

    from PIL import Image, ImageOps

    from flux2_lora.data.references import reference_size
    from flux2_lora.data.scan import DatasetError
    from flux2_lora.display import escape
    from flux2_lora.training.images import resize_and_crop, to_rgb

    out = []
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                with Image.open(p) as raw:
                    im = to_rgb(ImageOps.exif_transpose(raw))
        except Exception as e:  # PIL raises many types on bad files; the message names the file
            raise DatasetError(f"validation.references: {escape(p)}: cannot load the image ({e})") from None
        size = reference_size(im.width, im.height, len(paths), max_pixels)
        out.append(resize_and_crop(im, size, center_crop=True, flip=False, crop_rng=random.Random(0)))
    return out


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
            for n, prompt in enumerate(s.prompts):
                embeds = self.prompts.get([prompt]).to(self.device, self.dtype)
                kwargs: dict[str, Any] = {}
                refs = s.references[n] if n < len(s.references) else []
                if refs:  # drawn as FLUX.2 edits: diffusers' own reference path (image=)
                    kwargs["image"] = reference_images(refs, s.reference_max_pixels)
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
