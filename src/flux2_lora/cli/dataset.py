"""``flux2-lora dataset check PATH [--json]``: counts and problems by file, before any training."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from flux2_lora.cli.common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect a dataset")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="count images and captions and list problems by file")
    c.add_argument("path", help="folder, .zip, or 'demo'")
    c.add_argument("--caption-extension", default=".txt")
    c.add_argument("--default-caption", default="")
    c.add_argument("--resolution", type=int, default=None, help="warn about images smaller than this")
    c.add_argument(
        "--trigger-word", default="", help="report captions without it, or [trigger] placeholders without one"
    )
    c.add_argument(
        "--buckets", action="store_true", help="show the aspect-ratio bucket table (at --resolution)"
    )
    c.add_argument(
        "--bucket-step", type=int, default=64, help="bucket side granularity in pixels (multiple of 16)"
    )
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from flux2_lora.data import DatasetError, open_dataset

    with tempfile.TemporaryDirectory(prefix="flux2-lora-check-") as work:
        try:
            root, report = open_dataset(
                args.path,
                work,
                caption_extension=args.caption_extension,
                default_caption=args.default_caption,
                resolution=args.resolution,
            )
        except DatasetError as e:
            if args.json:
                print(json.dumps({"error": str(e)}))
                return 1
            return fail(str(e))
        extra = _extras(args, report, root)
        if args.json:
            print(json.dumps({**report.to_dict(), **extra["json"]}, indent=1, default=str))
        else:
            print(report.format())
            for line in extra["text"]:
                print(line)
    # Problem files are skipped by training, so only "nothing usable" fails the check.
    return 0 if report.items else 1


def _extras(args: argparse.Namespace, report, root: Path) -> dict:  # type: ignore[no-untyped-def]
    """Trigger-word findings and the bucket table, beside the scan's own report."""
    from flux2_lora.data.buckets import bucket_table, clamped, format_table
    from flux2_lora.data.captions import trigger_findings
    from flux2_lora.display import escape

    text: list[str] = []
    out: dict = {}
    findings = trigger_findings(
        [(escape(i.path.relative_to(root)), i.caption) for i in report.items], args.trigger_word
    )
    if findings:
        out["trigger"] = [{"file": f, "severity": s, "message": m} for f, s, m in findings]
        text.append("trigger word:")
        text += [f"  {s}: {f + ': ' if f else ''}{m}" for f, s, m in findings]
    if args.buckets:
        if args.bucket_step % 16:
            text.append("--bucket-step must be a multiple of 16")
        else:
            res = args.resolution or 1024
            table = bucket_table(((i.width, i.height) for i in report.items), res, args.bucket_step)
            out["buckets"] = [
                {"width": w, "height": h, "tokens": (w // 16) * (h // 16), "images": n}
                for (w, h), n in table.items()
            ]
            text.append(format_table(table))
            extreme = [escape(i.path.relative_to(root)) for i in report.items if clamped(i.width, i.height)]
            if extreme:
                out["cropped_beyond_rounding"] = extreme
                text.append("  aspect beyond 4:1, cropped to 4:1: " + ", ".join(extreme))
    return {"json": out, "text": text}
