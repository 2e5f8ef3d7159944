"""``flux2-lora dataset check PATH [--json]``: counts and problems by file, before any training."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux2_lora.cli.common import add_field_args, fail, fields_from_args
from flux2_lora.config import DatasetSection

if TYPE_CHECKING:
    from flux2_lora.data.scan import DatasetReport


# The options are dataset fields: their help, bounds and defaults come from DatasetSection.
CHECK_FIELDS = (
    "caption_extension",
    "default_caption",
    "resolution",
    "trigger_word",
    "bucketing",
    "bucket_step",
    "reference_path",
    "reference_max_pixels",
)
FLAGS = {"bucketing": ["--bucketing", "--buckets"]}
NOTES = {
    "resolution": "The check reports images smaller than it when given.",
    "trigger_word": "The check reports captions without it, or [trigger] placeholders without one.",
    "bucketing": "The check shows the bucket table (at --resolution).",
    "reference_path": "The check reports pairs, targets without references, orphans, counts and sizes.",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect a dataset")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="count images and captions and list problems by file")
    c.add_argument("path", help="folder, .zip, 'demo' or 'demo-edit'")
    add_field_args(c, DatasetSection, CHECK_FIELDS, flags=FLAGS, notes=NOTES)
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from flux2_lora.data import DatasetError, open_dataset

    ds = fields_from_args(args, DatasetSection, CHECK_FIELDS, flags=FLAGS)
    if ds is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="flux2-lora-check-") as work:
        try:
            root, report = open_dataset(
                args.path,
                work,
                caption_extension=ds.caption_extension,
                default_caption=ds.default_caption,
                # Small images are worth a word only against a resolution the user is training at.
                resolution=ds.resolution if args.resolution is not None else None,
                reference_path=ds.reference_path,
                reference_max_pixels=ds.reference_max_pixels,
            )
        except DatasetError as e:
            if args.json:
                print(json.dumps({"error": str(e)}))
                return 1
            return fail(str(e))
        extra = _extras(ds, report, root)
        if args.json:
            print(json.dumps({**report.to_dict(), **extra["json"]}, indent=1, default=str))
        else:
            print(report.format())
            for line in extra["text"]:
                print(line)
    # Problem files are skipped by training, so only "nothing usable" fails the check.
    return 0 if report.items else 1


def _extras(ds: DatasetSection, report: DatasetReport, root: Path) -> dict[str, Any]:
    """Trigger-word findings and the bucket table, beside the scan's own report."""
    from flux2_lora.data.buckets import bucket_table, clamped, format_table
    from flux2_lora.data.captions import trigger_findings
    from flux2_lora.display import escape

    text: list[str] = []
    out: dict[str, Any] = {}
    findings = trigger_findings(
        [(escape(i.path.relative_to(root)), i.caption) for i in report.items], ds.trigger_word
    )
    if findings:
        out["trigger"] = [{"file": f, "severity": s, "message": m} for f, s, m in findings]
        text.append("trigger word:")
        text += [f"  {s}: {f + ': ' if f else ''}{m}" for f, s, m in findings]
    if ds.bucketing:
        table = bucket_table(((i.width, i.height) for i in report.items), ds.resolution, ds.bucket_step)
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
