"""What a run trains and scores on: the dataset's items (trigger, repeats, buckets, tag orders) with the
held-out eval images set aside, and every caption a step may use."""

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

    def scan(path: str, field: str) -> tuple[Any, Path]:
        root, report = open_dataset(
            path,
            run_dir / ".work" / field,
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
    items, held_out = split_held_out(build_items(report, root, config), root, config)
    if val.eval_folder.strip():
        eval_report, eval_root = scan(val.eval_folder, "validation.eval_folder")
        held_out = build_items(eval_report, eval_root, config)
    if held_out:
        log.info("eval loss: %d image(s) at %d noise levels", len(held_out), len(val.eval_sigmas))
    return items, held_out


def training_captions(items: list[Item], config: TrainConfig) -> list[str]:
    """Every caption text a step may use (what the cache must hold)."""
    out = [v for i in items for v in (i.variants or [i.caption])]
    if config.dataset.caption_dropout > 0:
        out.append("")
    return out
