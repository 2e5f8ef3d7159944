"""``flux2-lora compare RUN RUN...``: settings that differ, eval/training loss, speed, memory, LoRA size."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flux2_lora.cli.common import fail, show


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare runs: differing settings, eval and training loss, s/step, memory, curves, sample grid",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (two or more)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--html", type=Path, metavar="FILE", help="write a report with the curves and the grid")
    p.add_argument("--grid", type=Path, metavar="FILE", help="write the sample grid (rows: runs) as PNG")
    p.add_argument("--curves", type=Path, metavar="FILE", help="write the loss curves as PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flux2_lora.experiments.compare import CompareError, jsonable, table_text, write_outputs

    try:
        result = write_outputs(args.runs, html_file=args.html, grid_file=args.grid, curves_file=args.curves)
    except CompareError as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"compare: cannot write {show(e.filename)}: {e.strerror or e}")
    if args.json:
        print(json.dumps(jsonable(result), indent=1))
    else:
        print(table_text(result))
        for flag, path in (("--html", args.html), ("--grid", args.grid), ("--curves", args.curves)):
            if path:
                print(f"wrote {show(path)} ({flag[2:]})")
    return 0
