"""Aspect-ratio buckets (pure): each image trains at about the target pixel area in its own shape.

A bucket is (width, height), both multiples of ``step`` (itself a multiple of 16, FLUX.2's token
size), with width × height ≤ resolution². An image is scaled to cover its bucket and only the
rounding excess (< step pixels per side, after scaling) is cropped. Aspect ratios beyond
``MAX_ASPECT`` are clamped, which crops more; the dataset check reports those images.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

MAX_ASPECT = 4.0


def bucket_for(width: int, height: int, resolution: int, step: int) -> tuple[int, int]:
    area = resolution * resolution
    aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
    bw = max(step, int(math.sqrt(area * aspect) // step) * step)
    bh = max(step, int(math.sqrt(area / aspect) // step) * step)
    return bw, bh


def crop_after_scaling(width: int, height: int, bucket: tuple[int, int]) -> tuple[float, float]:
    """Pixels cropped (x, y) once the image is scaled to cover its bucket."""
    scale = max(bucket[0] / width, bucket[1] / height)
    return width * scale - bucket[0], height * scale - bucket[1]


def bucket_table(sizes: Iterable[tuple[int, int]], resolution: int, step: int) -> dict[tuple[int, int], int]:
    """{(width, height): images}, largest area first."""
    counts = Counter(bucket_for(w, h, resolution, step) for w, h in sizes)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[0][0] * kv[0][1], kv[0])))


def clamped(width: int, height: int) -> bool:
    return not (1 / MAX_ASPECT <= width / height <= MAX_ASPECT)


def format_table(table: dict[tuple[int, int], int]) -> str:
    rows = [
        f"  {w:>5} × {h:<5} {(w // 16) * (h // 16):>6} tokens  {n:>4} image(s)" for (w, h), n in table.items()
    ]
    return "\n".join(["aspect buckets (width × height):", *rows])
