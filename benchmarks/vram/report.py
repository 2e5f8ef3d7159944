"""The stored GPU measurements (measured.json) against the estimate as the code computes it now.

    python benchmarks/vram/report.py [--json FILE] [--markdown]

Each row of measured.json holds the config and what the GPU measured (max_memory_allocated and
max_memory_reserved of the training steps, and nvidia-smi's figure for the process). The estimate is
recomputed here, so a change to the memory model is checked against the same measurements without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.memory.matrix import config as make_config  # noqa: E402


def rows_with_estimates(path: Path) -> list[dict[str, Any]]:
    from flux2_lora.memory import estimate
    from flux2_lora.memory.estimate import CUDA_CONTEXT_GIB, allocator_slack

    out = []
    for row in json.loads(path.read_text()):
        m = row.get("measured")
        if not m:
            continue
        config = make_config(*row["config"], variant=row["variant"])
        training = estimate(config).phases["training"]
        total = training * (1 + allocator_slack(config)) + CUDA_CONTEXT_GIB
        out.append(
            {
                "index": row["index"],
                "variant": row["variant"],
                "config": " ".join(row["config"]),
                "estimated_gib": training,
                "allocated_gib": m["allocated_gib"],
                "reserved_gib": m["reserved_gib"],
                "nvml_gib": m.get("nvml_gib"),
                "error": (training - m["allocated_gib"]) / m["allocated_gib"],
                "total_gib": total,
                "total_error": (total - m["nvml_gib"]) / m["nvml_gib"] if m.get("nvml_gib") else None,
                "device": row.get("device"),
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measured", type=Path, default=HERE / "measured.json")
    parser.add_argument("--markdown", action="store_true", help="the README's table")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = rows_with_estimates(args.measured)
    if args.markdown:
        print(
            "| variant | settings | measured allocated | estimate | error | nvidia-smi | estimated total | error |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['variant']} | {r['config']} | {r['allocated_gib']:.2f} | {r['estimated_gib']:.2f} | "
                f"{r['error']:+.1%} | {r['nvml_gib']:.2f} | {r['total_gib']:.2f} | {r['total_error']:+.1%} |"
            )
    else:
        for r in rows:
            print(
                f"{r['index']:2} {r['variant']:8} {r['config']:78} alloc {r['allocated_gib']:6.2f} "
                f"est {r['estimated_gib']:6.2f} {r['error']:+6.1%}   smi {r['nvml_gib']:6.2f} "
                f"total {r['total_gib']:6.2f} {r['total_error']:+6.1%}"
            )
    errors = [abs(r["error"]) for r in rows]
    worst = max(rows, key=lambda r: abs(r["error"]))
    print(
        f"{len(rows)} rows on {rows[0]['device']}: allocated peak error median {statistics.median(errors):.1%}, "
        f"worst {worst['error']:+.1%} (row {worst['index']}); total vs nvidia-smi worst "
        f"{max(abs(r['total_error']) for r in rows):.1%}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
