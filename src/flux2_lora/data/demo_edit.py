"""The embedded edit demo's generated dataset (PIL only, no torch): ``dataset.path: demo-edit``.

Each pair is a shape on a grey floor (the reference) and the same shape, at the same place, recoloured
(the target); the caption is the instruction ("make the circle blue"). Every fourth pair has a second,
smaller reference, a colour swatch ("paint the square in the colour of image 2"), so the demo trains one
and two references of different sizes. The layout is metadata.jsonl (targets/, inputs/).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from flux2_lora.data.demo import _COLORS, _SHAPES, cache_root, draw_shape, generate_once

if TYPE_CHECKING:
    from PIL import Image

DEMO_EDIT_PATH = "demo-edit"
DEMO_EDIT_VERSION = "v1"  # bump when the generated dataset changes, so caches regenerate
DEMO_EDIT_SIZE = 128
DEMO_EDIT_SWATCH = 64  # the second reference's side: references of different sizes in one run
DEMO_EDIT_PAIRS = 16


def is_demo_edit(path: str) -> bool:
    """Whether a dataset.path names the embedded edit dataset ('demo-edit', in any case)."""
    return path.strip().lower() == DEMO_EDIT_PATH


def demo_edit_dir() -> Path:
    return cache_root() / f"demo-edit-dataset-{DEMO_EDIT_VERSION}"


def demo_edit_pair(i: int) -> tuple[list[Image.Image], Image.Image, str]:
    """(references, target, instruction) of pair ``i`` (PIL images), deterministic."""
    from PIL import Image, ImageDraw

    rng = random.Random(5000 + i)
    names = list(_COLORS)
    shape = _SHAPES[i % len(_SHAPES)]
    before = names[i % len(names)]
    after = names[(i * 5 + 1) % len(names)]
    if after == before:
        after = names[(names.index(before) + 1) % len(names)]
    size = DEMO_EDIT_SIZE
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)

    def scene(color: str) -> Image.Image:
        im = Image.new("RGB", (size, size), (200, 200, 200))
        draw = ImageDraw.Draw(im)
        draw.rectangle((0, size * 3 // 4, size, size), fill=(170, 170, 170))  # a floor line: some layout
        draw_shape(draw, shape, box, _COLORS[color])
        return im

    references = [scene(before)]
    if i % 4 == 3:
        references.append(Image.new("RGB", (DEMO_EDIT_SWATCH, DEMO_EDIT_SWATCH), _COLORS[after]))
        instruction = f"paint the {shape} in the colour of image 2"
    else:
        instruction = f"make the {shape} {after}"
    return references, scene(after), instruction


def ensure_demo_edit_dataset(target: Path | None = None) -> Path:
    """Generate the edit dataset once (deterministic) and return its folder."""

    def write(folder: Path) -> None:
        (folder / "targets").mkdir(exist_ok=True)
        (folder / "inputs").mkdir(exist_ok=True)
        lines = []
        for i in range(DEMO_EDIT_PAIRS):
            refs, goal, instruction = demo_edit_pair(i)
            goal.save(folder / "targets" / f"edit_{i:02d}.png")
            names = []
            for k, ref in enumerate(refs):
                name = f"inputs/edit_{i:02d}_{k}.png"
                ref.save(folder / name)
                names.append(name)
            lines.append(
                json.dumps(
                    {"file_name": f"targets/edit_{i:02d}.png", "text": instruction, "references": names}
                )
            )
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    return generate_once(target or demo_edit_dir(), DEMO_EDIT_VERSION, write)
