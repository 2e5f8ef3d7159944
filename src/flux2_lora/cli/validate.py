"""``flux2-lora validate``: check a config file without loading anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flux2_lora.cli.common import add_config_args, config_from_args, fail
from flux2_lora.config import TrainConfig
from flux2_lora.config.io import to_yaml
from flux2_lora.config.warnings import ConfigWarning, common_mistakes, upscaled_from_report
from flux2_lora.variants import is_demo


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a config: every error by field, common mistakes, no training")
    add_config_args(p)
    p.add_argument("--print", action="store_true", help="print the resolved config")
    p.add_argument(
        "--gpu",
        help="GPU class the run is meant for (24, 48, 'H100', or GiB), for the memory and precision "
        "warnings; default: the local GPU",
    )
    p.set_defaults(func=run)


def mistakes(config: TrainConfig, gpu: str | None) -> list[ConfigWarning]:
    """The common-mistake warnings, with what can be learnt cheaply: the estimate's verdict on the GPU and
    a scan of a dataset folder (image headers only)."""
    from flux2_lora.memory import estimate, find_gpu, verdict

    card = find_gpu(gpu)
    try:
        verdict_on = verdict(estimate(config).total_gib, card.gib) if card else None
    except Exception:  # an unreadable model folder: `estimate` and the trainer explain it; no warning here
        verdict_on = None
    num = upscaled = None
    path = Path(config.dataset.path).expanduser()
    if not is_demo(config.dataset.path) and path.is_dir():
        from flux2_lora.data.scan import DatasetError, scan_dataset

        try:
            report = scan_dataset(
                path,
                caption_extension=config.dataset.caption_extension,
                default_caption=config.dataset.default_caption,
            )
        except DatasetError:
            report = None  # the trainer reports an unusable dataset with its own message
        if report is not None:
            num = len(report.items)
            upscaled = upscaled_from_report(report, config.dataset.resolution)
    return common_mistakes(
        config, num_images=num, upscaled=upscaled, verdict=verdict_on, gpu_name=card.name if card else None
    )


def run(args: argparse.Namespace) -> int:
    from flux2_lora.memory import find_gpu

    config = config_from_args(args)
    if config is None:
        return 2
    if args.gpu and find_gpu(args.gpu) is None:
        return fail(f"--gpu: unknown GPU {args.gpu!r}; give a class like 24, 48, 80 or a size in GiB", 2)
    for w in mistakes(config, args.gpu):
        head = f"{w.field}: {w.message}" if w.field else w.message
        print(f"warning: {head}\n  fix: {w.fix}", file=sys.stderr)
    if args.print:
        print(to_yaml(config), end="")
    else:
        print("config is valid")
    return 0
