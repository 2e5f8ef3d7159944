"""``flux2-lora autotune DATASET``: a complete config proposed from the dataset, each value with its reason,
fitted to the GPU by the memory model; ``--write FILE`` saves it for ``flux2-lora train FILE``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from flux2_lora.cli.common import fail, show


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "autotune",
        help="propose a config from the dataset (kind, rank, steps, LR, resolution, buckets), fitted to the GPU",
        description="Read the dataset (image count, sizes, aspects, captions, trigger word) and propose a "
        "complete training config, each value with its reason, fitted to the GPU by the memory model.",
    )
    p.add_argument("dataset", help="a folder of images and captions, a .zip of one, or 'demo'")
    p.add_argument("--variant", help="klein-4b (default), klein-9b, dev, or demo")
    p.add_argument("--gpu", help="GPU class to fit (24, 48, 'H100', or GiB); default: the local GPU")
    p.add_argument(
        "--kind",
        choices=["character", "style", "concept"],
        help="the LoRA kind (default: read from the captions)",
    )
    p.add_argument(
        "--trigger-word", default="", help="the trigger word to check the captions for (default: found)"
    )
    p.add_argument("--caption-extension", default=".txt", metavar=".EXT")
    p.add_argument("--json", action="store_true", help="print the proposal as JSON")
    p.add_argument(
        "--write", metavar="FILE", help="write the proposed config as YAML, the reasons as comments"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flux2_lora.data.archive import prepare_dataset_source
    from flux2_lora.data.demo import ensure_demo_dataset, is_demo
    from flux2_lora.data.scan import DatasetError
    from flux2_lora.experiments.autotune import format_proposal, propose

    source = args.dataset
    try:
        with tempfile.TemporaryDirectory(prefix="flux2-autotune-") as tmp:
            if is_demo(source):
                root = ensure_demo_dataset()
                variant = args.variant or "demo"
            else:
                source = str(Path(source).expanduser().resolve())
                root = prepare_dataset_source(source, tmp)  # a .zip is unpacked here to be read
                variant = args.variant
            proposal = propose(
                root,
                dataset_path="demo" if is_demo(args.dataset) else source,
                variant=variant,
                gpu=args.gpu,
                kind=args.kind,
                caption_extension=args.caption_extension,
                trigger_word=args.trigger_word,
            )
    except (DatasetError, ValueError, OSError) as e:
        return fail(show(str(e)), 2)
    if args.write:
        try:
            write_proposal(proposal, Path(args.write))
        except OSError as e:
            return fail(f"--write: cannot write {show(args.write)}: {e.strerror or e}")
    if args.json:
        print(json.dumps(proposal.to_dict(), indent=1, default=str))
    else:
        print("\n".join(show(line) for line in format_proposal(proposal).splitlines()))
        if args.write:
            print(f"written: {show(args.write)}; train it with: flux2-lora train {show(args.write)}")
        else:
            print("save it with --write FILE, then: flux2-lora train FILE", file=sys.stderr)
    return 0


def write_proposal(proposal, path: Path) -> None:  # type: ignore[no-untyped-def]
    from flux2_lora.config.io import to_yaml

    lines = [f"# flux2-lora autotune: a {proposal.kind} LoRA for {proposal.stats.root}"]
    for c in proposal.choices:
        lines.append(f"#   {c.field or 'kind'} = {c.value!r}: {c.reason}".replace("\n", " "))
    note = proposal.fit.get("note")
    if note:
        lines.append(f"# GPU {proposal.fit.get('gpu') or ''}: {note}".replace("\n", " "))
    path.write_text("\n".join(lines) + "\n" + to_yaml(proposal.config), encoding="utf-8")
