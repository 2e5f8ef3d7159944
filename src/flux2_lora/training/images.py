"""Loading one training image as the tensor the VAE expects: float32 CHW in [-1, 1], square or bucketed."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps

from flux2_lora.data.scan import DatasetError
from flux2_lora.display import escape

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB; transparency is composited on white (what a viewer shows)."""
    if im.mode in _HIGH_DEPTH_MODES:
        # 16-bit images hold 0..65535; PIL's plain convert would clip everything above 255 to white.
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif im.mode == "F":
        im = im.convert("L")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # CMYK, palette, grayscale, 1-bit, YCbCr, …


def resize_and_crop(
    im: Image.Image,
    resolution: int | tuple[int, int],
    *,
    center_crop: bool,
    flip: bool,
    crop_rng: random.Random,
) -> Image.Image:
    """Scale to cover the target (a square side, or an aspect bucket's (width, height)), crop the
    excess (center or from ``crop_rng``), then mirror."""
    tw, th = (resolution, resolution) if isinstance(resolution, int) else resolution
    w, h = im.size
    scale = max(tw / w, th / h)
    # max(): rounding must never leave a side a pixel short of the crop.
    size = (max(tw, round(w * scale)), max(th, round(h * scale)))
    if size != im.size:
        # LANCZOS keeps detail when shrinking; BICUBIC rings less when enlarging small images.
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        im = im.resize(size, resample, reducing_gap=3.0 if scale < 1 else None)
    w, h = im.size
    if center_crop:
        left, top = (w - tw) // 2, (h - th) // 2
    else:
        # Both draws always happen, so the stream of crop_rng does not depend on the aspect ratio.
        left, top = crop_rng.randint(0, w - tw), crop_rng.randint(0, h - th)
    im = im.crop((left, top, left + tw, top + th))
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return im


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """8-bit RGB image → float32 CHW in [-1, 1]."""
    w, h = im.size
    data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)  # bytearray: a writable buffer
    return data.view(h, w, 3).permute(2, 0, 1).float().div_(127.5).sub_(1.0).contiguous()


def load_training_image(
    path: Path, resolution: int | tuple[int, int], *, center_crop: bool, flip: bool, crop_rng: random.Random
) -> torch.Tensor:
    """Read ``path`` and return a ``3×H×W`` float32 tensor in [-1, 1] (square side or (width, height))."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's palette-transparency notes
            with Image.open(path) as raw:
                # Cameras store portrait shots sideways plus an EXIF tag; apply it as viewers do.
                im = ImageOps.exif_transpose(raw)
                im = to_rgb(im)
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{escape(path)}: image is too large to open safely ({e})") from None
    except Exception as e:  # PIL's plugins raise many types on bad files; the user needs the file name
        raise DatasetError(f"{escape(path)}: cannot load the image ({e})") from None
    im = resize_and_crop(im, resolution, center_crop=center_crop, flip=flip, crop_rng=crop_rng)
    return pil_to_tensor(im)
