"""Masked loss (``dataset.mask_path``): one grayscale mask per image, the loss weighted per token by it.

The convention is ai-toolkit's ``mask_path`` and OneTrainer's masks: a folder of masks named by the
image's stem (photo.jpg → photo.png / photo.jpg / …), white trains, black is ignored. A mask is resized to
its image's size first, then cropped, flipped and bucketed with the same seeded draws as the image, so it
covers the same pixels; then each 16×16 pixel patch (one FLUX.2 token, the latents being 2×2-patchified
at 1/8 scale) averages into one weight in [unmasked_weight, 1].
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from flux2_lora.data.masks import find_mask, mask_root
from flux2_lora.data.scan import DatasetError
from flux2_lora.display import escape
from flux2_lora.training.images import resize_and_crop

__all__ = ["MaskSource", "find_mask", "load_mask", "mask_root", "masked_mean", "token_weights"]

PATCH = 16  # pixels per token side


def load_mask(
    path: Path,
    image_size: tuple[int, int],
    resolution: int | tuple[int, int],
    *,
    center_crop: bool,
    flip: bool,
    crop_rng: random.Random,
) -> torch.Tensor:
    """The mask as (H, W) float32 in [0, 1], cropped and flipped as its image (``image_size``) was."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as raw:
                im = ImageOps.exif_transpose(raw)
                # An alpha channel is the mask where there is one (a cut-out PNG); else its brightness.
                im = im.getchannel("A") if "A" in im.getbands() else im.convert("L")
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{escape(path)}: mask is too large to open safely ({e})") from None
    except Exception as e:  # PIL's plugins raise many types on bad files; the user needs the file name
        raise DatasetError(f"{escape(path)}: cannot load the mask ({e})") from None
    if im.size != image_size:
        im = im.resize(image_size, Image.Resampling.BILINEAR)
    im = resize_and_crop(im, resolution, center_crop=center_crop, flip=flip, crop_rng=crop_rng)
    w, h = im.size
    data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(h, w).float().div_(255.0)


def token_weights(mask: torch.Tensor, unmasked_weight: float = 0.0) -> torch.Tensor:
    """(H, W) mask → (H/16 · W/16,) per-token weights in row-major token order (as latents are packed)."""
    pooled = torch.nn.functional.avg_pool2d(mask[None, None], PATCH)[0, 0]
    return (unmasked_weight + (1.0 - unmasked_weight) * pooled).flatten()


def image_size(path: Path) -> tuple[int, int]:
    """The (width, height) the training image is loaded at (EXIF orientation applied)."""
    with Image.open(path) as raw:
        return ImageOps.exif_transpose(raw).size


def masked_mean(err: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean of ``err`` (B, N, C) over tokens and channels, each token weighted by ``weights``
    (B, N); normalised by the weights' sum, so a half-masked image's loss keeps the scale of a whole one
    and a masked-out token's error has no gradient at all."""
    if weights is None:
        return err.reshape(err.shape[0], -1).mean(dim=1)
    w = weights.to(err.device, err.dtype).unsqueeze(-1)
    total = (err * w).sum(dim=(1, 2))
    return total / (w.sum(dim=(1, 2)) * err.shape[-1]).clamp_min(1e-8)


class MaskSource:
    """Per-token loss weights per (item, flip): the crop follows the image's (the cached latents' fixed
    crop, a centre crop, or the sample's own seeded crop), so mask and latent cover the same pixels."""

    def __init__(self, items: list, config: Any, targets: list[int | tuple[int, int]]):
        self.items = items
        self.config = config
        self.targets = targets
        self.cache: dict[tuple[int, bool], torch.Tensor] = {}

    def weights(self, item: int, flip: bool, sample_seed: int, fixed_crop: bool) -> torch.Tensor:
        """(tokens,) float32 weights of ``item``'s sample; ``fixed_crop``: the latents' crop is the
        item's fixed one (cached latents or a centre crop), else the sample's own (``sample_seed``)."""
        from flux2_lora.training.batches import derive_seed

        ds = self.config.dataset
        key = (item, flip)
        if fixed_crop and key in self.cache:
            return self.cache[key]
        target = self.targets[item]
        tw, th = (target, target) if isinstance(target, int) else target
        it = self.items[item]
        if it.mask is None:
            out = torch.ones((tw // PATCH) * (th // PATCH))
        else:
            seed = derive_seed(self.config.training.seed, 2, item) if fixed_crop else sample_seed
            mask = load_mask(
                it.mask,
                image_size(it.path),
                target,
                center_crop=ds.center_crop,
                flip=flip,
                crop_rng=random.Random(seed),
            )
            out = token_weights(mask, ds.unmasked_weight)
        if fixed_crop:
            self.cache[key] = out
        return out
