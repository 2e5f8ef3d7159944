"""The demo's before/after picture: the same prompts and seeds drawn at LoRA scale 0 (the base model) and
1 (the LoRA as trained), side by side, and a pixel statistic of what the quickstart LoRA teaches.

The demo model knows coloured shapes on a plain cool background; the quickstart dataset puts them on warm
diagonal stripes ("sks style"). ``background_warmth`` measures that concept: red minus blue, the median
over a picture's border, where the shape rarely is (plain background about -4, the stripes about +100).
``shape_redness`` checks the base model itself: its "red" shapes are redder than its "blue" ones.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

GRID_FILE = "before_after.png"
STATS_FILE = "before_after.json"
CELL = 128  # each 64-px sample drawn at twice its size, so the grid is readable in a README
BORDER = 0.125  # the outer eighth of each side


def background_warmth(image: Any) -> float:
    """Median of R − B over the picture's border ring (0–255 units)."""
    import numpy as np

    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = a.shape
    bh, bw = max(1, int(h * BORDER)), max(1, int(w * BORDER))
    mask = np.zeros((h, w), dtype=bool)
    mask[:bh], mask[-bh:], mask[:, :bw], mask[:, -bw:] = True, True, True, True
    return float(np.median(a[..., 0][mask] - a[..., 2][mask]))


def shape_redness(image: Any, background: tuple[int, int, int] = (236, 236, 240)) -> float:
    """Mean R − B of the pixels far from the plain background (the shape): what the base model drew for
    "red" vs "blue". 0 when nothing stands out."""
    import numpy as np

    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    far = np.abs(a - np.asarray(background, dtype=np.float32)).sum(axis=-1) > 90
    return float((a[..., 0] - a[..., 2])[far].mean()) if far.any() else 0.0


def grid(before: Sequence[Any], after: Sequence[Any], labels: Sequence[str]) -> Any:
    """Two rows (scale 0, scale 1) of the same prompts and seeds, each cell labelled below the pictures."""
    from PIL import Image, ImageDraw

    cols = len(before)
    head, foot = 60, 30
    out = Image.new("RGB", (head + cols * CELL, 2 * CELL + foot), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for row, (name, images) in enumerate((("scale 0", before), ("scale 1", after))):
        draw.text((6, row * CELL + CELL // 2 - 6), name, fill=(0, 0, 0))
        for col, img in enumerate(images):
            out.paste(
                img.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST),
                (head + col * CELL, row * CELL),
            )
    for col, label in enumerate(labels):
        draw.text((head + col * CELL + 4, 2 * CELL + 8), label[:22], fill=(0, 0, 0))
    return out


def write_before_after(
    run_dir: Path,
    prompts: Sequence[str],
    num_samples: int,
    after: Sequence[Any],
    draw_base: Callable[[], list[Any]],
) -> Path:
    """``after``: the final validation samples (prompt-major, ``num_samples`` seeds each); ``draw_base``
    draws the same at scale 0. Writes the grid and the warmth of every sample beside it."""
    before = draw_base()
    labels = [f"{p.split(' on ')[0]} #{k}" for p in prompts for k in range(num_samples)]
    grid(before, after, labels).save(run_dir / GRID_FILE)
    warm0 = [background_warmth(i) for i in before]
    warm1 = [background_warmth(i) for i in after]
    stats = {
        "prompts": list(prompts),
        "samples_per_prompt": num_samples,
        "background_warmth": {"scale_0": warm0, "scale_1": warm1},
        "mean_background_warmth": {"scale_0": statistics.fmean(warm0), "scale_1": statistics.fmean(warm1)},
        "shape_redness": {"scale_0": [shape_redness(i) for i in before]},
    }
    (run_dir / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return run_dir / GRID_FILE


def demo_before_after(sampler: Any, model: Any, run_dir: Path, after: Sequence[Any]) -> Path:
    """The grid for a finished demo run: ``sampler`` draws the base with the LoRA switched off."""

    def base() -> list[Any]:
        model.disable_adapters()  # PEFT through diffusers: scale 0 without touching the weights
        try:
            return list(sampler.sample(model))
        finally:
            model.enable_adapters()

    settings = sampler.settings
    return write_before_after(run_dir, settings.prompts, settings.validation.num_samples, after, base)
