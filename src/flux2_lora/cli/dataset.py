"""``flux2-lora dataset check PATH [--json]``: counts and problems by file, before any training;
``flux2-lora dataset check --config FILE`` checks each of a run's datasets (dataset.path and every
dataset.extra entry, with its own settings): images, captions missing, mask coverage, role."""

from __future__ import annotations

import argparse
import json
import sys
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
    "mask_path",
)
FLAGS = {"bucketing": ["--bucketing", "--buckets"]}
NOTES = {
    "resolution": "The check reports images smaller than it when given.",
    "trigger_word": "The check reports captions without it, or [trigger] placeholders without one.",
    "bucketing": "The check shows the bucket table (at --resolution).",
    "reference_path": "The check reports pairs, targets without references, orphans, counts and sizes.",
    "mask_path": "The check reports how many images have a mask.",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect a dataset")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="count images and captions and list problems by file")
    c.add_argument("path", nargs="?", help="folder, .zip, 'demo' or 'demo-edit' (or give --config)")
    add_field_args(c, DatasetSection, CHECK_FIELDS, flags=FLAGS, notes=NOTES)
    c.add_argument(
        "--config",
        dest="config_opt",
        metavar="FILE",
        help="check every dataset of this training config (dataset.path and each dataset.extra entry, with "
        "its own settings) instead of PATH",
    )
    c.add_argument("--preset", action="append", default=[], metavar="NAME", help="with --config: a preset")
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="with --config: override one field (dataset.extra takes YAML: "
        "--set 'dataset.extra=[{path: more, weight: 3}]')",
    )
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from flux2_lora.data import DatasetError, open_dataset

    if args.config_opt or args.preset or args.overrides:
        if args.path is not None:
            return fail("give PATH or --config, not both", 2)
        return _check_config(args)
    if args.path is None:
        return fail("give a dataset PATH, or --config FILE to check a run's datasets", 2)
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
        if ds.mask_path.strip():
            from flux2_lora.data.check import entry_summary, summary_text
            from flux2_lora.data.entries import dataset_parts

            try:
                summary = entry_summary(dataset_parts(ds)[0], report, root)
            except DatasetError as e:
                return _error(args, str(e))
            extra["json"]["masks"] = summary["masks"]
            extra["text"].append(summary_text(summary).split("\n", 1)[-1].strip())
        if args.json:
            print(json.dumps({**report.to_dict(), **extra["json"]}, indent=1, default=str))
        else:
            print(report.format())
            for line in extra["text"]:
                print(line)
    # Problem files are skipped by training, so only "nothing usable" fails the check.
    return 0 if report.items else 1


def _error(args: argparse.Namespace, message: str) -> int:
    if args.json:
        print(json.dumps({"error": message}))
        return 1
    return fail(message)


def _check_config(args: argparse.Namespace) -> int:
    """Each dataset of the config, with its own settings; fails when any has no usable image."""
    from flux2_lora.cli.common import config_from_args
    from flux2_lora.data import DatasetError, open_dataset
    from flux2_lora.data.check import entry_summary, summary_text
    from flux2_lora.data.entries import dataset_parts

    args.config = None
    config = config_from_args(args, quiet=args.json)
    if config is None:
        return 2
    ds = config.dataset
    summaries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flux2-lora-check-") as work:
        for n, part in enumerate(dataset_parts(ds)):
            s = part.settings
            try:
                root, report = open_dataset(
                    s.path,
                    Path(work) / str(n),
                    caption_extension=s.caption_extension,
                    default_caption=s.default_caption,
                    resolution=s.resolution,
                    field=part.field,
                    reference_path=ds.reference_path,
                    reference_max_pixels=ds.reference_max_pixels,
                )
                summary = entry_summary(part, report, root)
            except DatasetError as e:
                summaries.append({"entry": part.label, "path": s.path, "role": part.role, "error": str(e)})
                continue
            summaries.append({**summary, "report": report.to_dict()})
            if not args.json:
                print(summary_text(summary))
                for t in summary["trigger"]:
                    print(f"  trigger {t['severity']}: {t['file'] + ': ' if t['file'] else ''}{t['message']}")
                for f, ps in report.problems_by_file().items():
                    for p in ps[:3]:
                        print(f"  {p.severity}: {f}: {p.message}")
    if args.json:
        print(json.dumps({"entries": summaries}, indent=1, default=str))
    else:
        for entry in summaries:
            if "error" in entry:
                print(f"error: {entry['error']}", file=sys.stderr)
    return 0 if all(entry.get("num_images") for entry in summaries) else 1


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
