"""What a run trains and scores on: the dataset's items (trigger, repeats, buckets, tag orders) with the
held-out eval images set aside, and every caption a step may use. Each dataset.extra entry (role train
or regularization) is scanned with its own settings (data/entries.py) and appends its items, each tagged
with its source; each dataset's masks (its mask_path) attach to its own items."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.training.batches import Item, build_items
from flux2_lora.training.evaluation import split_held_out

log = logging.getLogger("flux2_lora")


def load_items(config: TrainConfig, run_dir: Path) -> tuple[list[Item], list[Item]]:
    """(training items, eval items): held-out images never train; an eval folder is scanned apart."""
    from flux2_lora.data import open_dataset, require_usable
    from flux2_lora.data.entries import dataset_parts

    ds, val = config.dataset, config.validation

    def scan(path: str, field: str, work: str, own: Any) -> tuple[Any, Path]:
        root, report = open_dataset(
            path,
            run_dir / ".work" / work,
            caption_extension=own.caption_extension,
            default_caption=own.default_caption,
            resolution=own.resolution,
            field=field,
            # An eval folder pairs the same way: its own metadata.jsonl, or the same relative folder.
            reference_path=ds.reference_path,
            reference_max_pixels=ds.reference_max_pixels,
        )
        for p in report.problems:
            log.warning("%s: %s: %s", field, p.file, p.message)
        require_usable(report)
        log.info("%s: %d images from %s", field, len(report.items), root)
        return report, root

    items: list[Item] = []
    held_out: list[Item] = []
    for source, part in enumerate(dataset_parts(ds)):
        # Each dataset with its own settings (an entry's unset field is the section's).
        own = config.model_copy(update={"dataset": part.settings})
        report, root = scan(part.settings.path, part.field, part.work, part.settings)
        built = _with_masks(build_items(report, root, own), root, own, part.label)
        if source == 0:  # held-out eval images come from the primary dataset
            built, held_out = split_held_out(built, root, config)
        res = part.settings.resolution
        for i in built:
            i.source, i.regularization = source, part.regularization
            i.caption_dropout = part.settings.caption_dropout
            if i.bucket is None and res != ds.resolution:
                i.bucket = (res, res)  # this dataset's own square size (the latents' shape)
        items += built
    if val.eval_folder.strip():
        eval_report, eval_root = scan(val.eval_folder, "validation.eval_folder", "validation.eval_folder", ds)
        held_out = build_items(eval_report, eval_root, config)
    if held_out:
        log.info("eval loss: %d image(s) at %d noise levels", len(held_out), len(val.eval_sigmas))
    return items, held_out


def _with_masks(items: list[Item], root: Path, config: TrainConfig, label: str) -> list[Item]:
    """Attach each image's mask (the dataset's mask_path); the masks' own folder never trains."""
    from flux2_lora.training.masks import find_mask, mask_root

    masks = mask_root(root, config.dataset.mask_path, f"{label}.mask_path")
    if masks is None:
        return items
    kept = [i for i in items if masks not in i.path.parents]
    missing = 0
    for i in kept:
        i.mask = find_mask(i.path, root, masks)
        missing += i.mask is None
    if missing:
        log.warning("%s: %d of %d images have no mask (trained unmasked)", label, missing, len(kept))
    return kept


def training_captions(items: list[Item], config: TrainConfig) -> list[str]:
    """Every caption text a step may use (what the cache must hold)."""
    out = [v for i in items for v in (i.variants or [i.caption])]
    if config.dataset.caption_dropout > 0 or any(i.caption_dropout for i in items):
        out.append("")
    return out
