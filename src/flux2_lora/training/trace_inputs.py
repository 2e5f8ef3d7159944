"""What the meta-tensor trace (training/trace.py) feeds the trainer's step beyond the config: an edit
sample's references, as the dataset's largest sample trains them, and block swap on the meta device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flux2_lora.config import TrainConfig


def largest_sample_references(config: TrainConfig) -> tuple[tuple[int, int], ...]:
    """The (width, height) each reference of the dataset's sample with the most reference tokens trains
    at: the sample the estimate sizes (data/references.largest_reference_tokens). () without references."""
    from flux2_lora.data.demo_edit import DEMO_EDIT_SIZE, DEMO_EDIT_SWATCH, is_demo_edit
    from flux2_lora.data.references import (
        METADATA_FILE,
        REFERENCE_MULTIPLE,
        oriented_size,
        plan_references,
        reference_size,
    )
    from flux2_lora.data.scan import walk_images

    ds = config.dataset
    groups: list[list[tuple[int, int]]] = []
    if is_demo_edit(ds.path):
        groups = [[(DEMO_EDIT_SIZE, DEMO_EDIT_SIZE), (DEMO_EDIT_SWATCH, DEMO_EDIT_SWATCH)]]
    else:
        root = Path(ds.path.strip()).expanduser()
        if (
            ds.path.strip()
            and root.is_dir()
            and (ds.reference_path.strip() or (root / METADATA_FILE).is_file())
        ):
            plan = plan_references(root, walk_images(root), ds.reference_path, walk_images)
            for refs in plan.references.values():
                try:
                    groups.append([oriented_size(r) for r in refs])
                except Exception:  # unreadable: the scan reports it and the pair does not train
                    continue

    def trained(sizes: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
        return tuple(reference_size(w, h, len(sizes), ds.reference_max_pixels) for w, h in sizes)

    def tokens(sizes: tuple[tuple[int, int], ...]) -> int:
        return sum((w // REFERENCE_MULTIPLE) * (h // REFERENCE_MULTIPLE) for w, h in sizes)

    return max((trained(g) for g in groups), key=tokens, default=())


def install_meta_swap(model: torch.nn.Module, config: TrainConfig) -> Any:
    """The trainer's block swap on the meta device (call under ``torch.device("meta")``: the host
    buffers are made on the default device, so nothing is allocated)."""
    from flux2_lora.training.block_swap import install_block_swap

    if config.memory.quantization != "none":
        # The quantized formats are stood in for by dense meta weights, so a slot would be sized dense.
        raise ValueError("trace: memory.blocks_to_swap is traced with memory.quantization none only")
    return install_block_swap(model, config.memory.blocks_to_swap, torch.device("meta"), pin=False)
