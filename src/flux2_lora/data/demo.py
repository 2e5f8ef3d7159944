"""Where the embedded demo lives, and its generated sample dataset (PIL only, no torch).

The demo model itself is built by :mod:`flux2_lora.training.demo_model` (torch); the UI needs only the paths and the
dataset, so they live here.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flux2_lora.variants import is_demo as is_demo  # re-exported: the test for the demo dataset

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

DEMO_VERSION = "v2"  # the cache folders also carry a hash of the code that generates them
TRIGGER = "sks"
_COLORS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 70),
    "yellow": (235, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
_SHAPES = ("circle", "square", "triangle")
DEMO_IMAGE_SIZE = 128
DEMO_NUM_IMAGES = 12
STRIPE_PERIOD = 32  # at 128 px; 16 px at the demo's 64 px, wide enough for its 8× VAE to draw


def cache_root() -> Path:
    """``$FLUX2_LORA_HOME`` or ``~/.cache/flux2-lora``."""
    env = os.environ.get("FLUX2_LORA_HOME")
    return Path(env) if env else Path.home() / ".cache" / "flux2-lora"


# The code that decides what the cached demo model holds: a change to any of them builds a new one (the
# cache folder is named by their hash), so no stale model outlives the code that made it.
_MODEL_SOURCES = ("data/demo.py", "training/demo_model.py", "training/demo_pretrain.py")


def code_key(*sources: str, extra: str = "") -> str:
    """12 hex digits of the SHA-256 of these package files (paths below flux2_lora/) and ``extra``."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(extra.encode())
    for rel in sources:
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()[:12]


def demo_model_key() -> str:
    from flux2_lora.variants import VARIANTS

    return code_key(*_MODEL_SOURCES, extra=repr(VARIANTS["demo"]))


def demo_model_dir() -> Path:
    return cache_root() / f"demo-model-{DEMO_VERSION}-{demo_model_key()}"


def demo_dataset_dir() -> Path:
    return cache_root() / f"demo-dataset-{DEMO_VERSION}-{code_key('data/demo.py')}"


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def stripes(size: int, a: tuple[int, int, int], b: tuple[int, int, int], period: int = 16) -> Image.Image:
    """A square of diagonal stripes, ``a`` and ``b`` alternating every half ``period`` pixels."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    half = period // 2
    for k in range(-size, size * 2, period):
        draw.polygon([(k, 0), (k + half, 0), (k + half - size, size), (k - size, size)], fill=a)
        draw.polygon(
            [(k + half, 0), (k + period, 0), (k + period - size, size), (k + half - size, size)], fill=b
        )
    return img


STRIPE_COLORS = ((250, 225, 170), (245, 180, 120))  # the warm stripes of "sks style"


def _demo_image(i: int) -> tuple[Image.Image, str]:
    """A 'sks style' picture: warm diagonal stripes behind one coloured shape. The stripes are the
    concept the quickstart LoRA teaches: the demo model's own world has plain backgrounds only."""
    from PIL import ImageDraw

    rng = random.Random(1000 + i)
    size = DEMO_IMAGE_SIZE
    img = stripes(size, *STRIPE_COLORS, period=STRIPE_PERIOD)
    draw = ImageDraw.Draw(img)
    shape = _SHAPES[i % len(_SHAPES)]
    color = list(_COLORS)[i % len(_COLORS)]
    r = rng.randint(size // 5, size // 3)
    cx = rng.randint(r, size - r)
    cy = rng.randint(r, size - r)
    draw_shape(draw, shape, (cx - r, cy - r, cx + r, cy + r), _COLORS[color])
    angle = rng.random() * 2 * math.pi  # a small highlight so no two images are the same
    hx, hy = int(cx + r * 0.4 * math.cos(angle)), int(cy + r * 0.4 * math.sin(angle))
    draw.ellipse((hx - 3, hy - 3, hx + 3, hy + 3), fill=(255, 255, 255))
    caption = f"a {color} {shape} on stripes, {TRIGGER} style"
    return img, caption


def generate_once(folder: Path, version: str, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` once, then a ``.complete`` marker holding ``version``. Concurrent callers (the
    processes of a multi-process run) wait for the first under a lock: none ever reads a half-written file."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return folder
        folder.mkdir(exist_ok=True)
        write(folder)
        marker.write_text(version)
    return folder


def ensure_demo_dataset(target: Path | None = None) -> Path:
    """Generate the sample dataset once (deterministic), return its folder."""

    def write(folder: Path) -> None:
        for i in range(DEMO_NUM_IMAGES):
            img, caption = _demo_image(i)
            img.save(folder / f"demo_{i:02d}.png")
            (folder / f"demo_{i:02d}.txt").write_text(caption + "\n", encoding="utf-8")

    return generate_once(target or demo_dataset_dir(), DEMO_VERSION, write)
