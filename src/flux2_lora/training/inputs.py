"""What a run trains and scores on: the dataset's items (trigger, repeats, buckets, tag orders) with the
held-out eval images set aside, and every caption a step may use. Extra datasets (dataset.extra_paths)
and the regularization dataset (dataset.regularization_path) are scanned with the same settings and
append their items, each tagged with its source; masks (dataset.mask_path) attach to the main dataset's."""

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

    ds, val = config.dataset, config.validation

    def scan(path: str, field: str, work: str | None = None) -> tuple[Any, Path]:
        root, report = open_dataset(
            path,
            run_dir / ".work" / (work or field),
            caption_extension=ds.caption_extension,
            default_caption=ds.default_caption,
            resolution=ds.resolution,
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

    report, root = scan(ds.path, "dataset.path")
    items, held_out = split_held_out(
        _with_masks(build_items(report, root, config), root, config), root, config
    )
    for n, path in enumerate(ds.extra_paths, start=1):
        extra_report, extra_root = scan(path, f"dataset.extra_paths[{n - 1}]", f"dataset.extra_paths.{n}")
        items += _tagged(build_items(extra_report, extra_root, config), n, False)
    if ds.regularization_path.strip():
        # Regularization captions describe the class without the subject: no trigger word added.
        plain = config.model_copy(update={"dataset": ds.model_copy(update={"trigger_word": ""})})
        reg_report, reg_root = scan(ds.regularization_path, "dataset.regularization_path")
        items += _tagged(build_items(reg_report, reg_root, plain), len(ds.extra_paths) + 1, True)
    if val.eval_folder.strip():
        eval_report, eval_root = scan(val.eval_folder, "validation.eval_folder")
        held_out = build_items(eval_report, eval_root, config)
    if held_out:
        log.info("eval loss: %d image(s) at %d noise levels", len(held_out), len(val.eval_sigmas))
    return items, held_out


def _tagged(items: list[Item], source: int, regularization: bool) -> list[Item]:
    for i in items:
        i.source, i.regularization = source, regularization
    return items


def _with_masks(items: list[Item], root: Path, config: TrainConfig) -> list[Item]:
    """Attach each image's mask (dataset.mask_path); the masks' own folder never trains."""
    from flux2_lora.training.masks import find_mask, mask_root

    masks = mask_root(root, config.dataset.mask_path)
    if masks is None:
        return items
    kept = [i for i in items if masks not in i.path.parents]
    missing = 0
    for i in kept:
        i.mask = find_mask(i.path, root, masks)
        missing += i.mask is None
    if missing:
        log.warning("dataset.mask_path: %d of %d images have no mask (trained unmasked)", missing, len(kept))
    return kept


def training_captions(items: list[Item], config: TrainConfig) -> list[str]:
    """Every caption text a step may use (what the cache must hold)."""
    out = [v for i in items for v in (i.variants or [i.caption])]
    if config.dataset.caption_dropout > 0:
        out.append("")
    return out
