"""``flux2-lora dataset check PATH [--json]``: counts and problems by file, before any training."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect a dataset")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="count images and captions and list problems by file")
    c.add_argument("path", help="folder, .zip, or 'demo'")
    c.add_argument("--caption-extension", default=".txt")
    c.add_argument("--default-caption", default="")
    c.add_argument("--resolution", type=int, default=None, help="warn about images smaller than this")
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ..data.archive import prepare_dataset_source
    from ..data.scan import DatasetError, scan_dataset
    from ..demo_paths import ensure_demo_dataset, is_demo

    with tempfile.TemporaryDirectory(prefix="flux2-lora-check-") as work:
        try:
            root = (
                ensure_demo_dataset() if is_demo(args.path) else prepare_dataset_source(Path(args.path), work)
            )
            report = scan_dataset(
                root,
                caption_extension=args.caption_extension,
                default_caption=args.default_caption,
                resolution=args.resolution,
            )
        except DatasetError as e:
            if args.json:
                print(json.dumps({"error": str(e)}))
                return 1
            return fail(str(e))
        if args.json:
            print(json.dumps(report.to_dict(), indent=1, default=str))
        else:
            print(report.format())
    # Problem files are skipped by training, so only "nothing usable" fails the check.
    return 0 if report.items else 1
