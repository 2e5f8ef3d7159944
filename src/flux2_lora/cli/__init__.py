"""``flux2-lora``: one entry point, one module per subcommand (each imports torch only when it runs)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules; each has add_parser(subparsers) and a run(args) -> int set as the default func.
SUBCOMMANDS = (
    "train",
    "validate",
    "presets",
    "dataset",
    "estimate",
    "generate",
    "runs_cmd",
    "compare",
    "sweep",
    "autotune",
    "ui",
    "cloud",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux2-lora",
        description="Train LoRA adapters for FLUX.2 ([dev], [klein] 4B/9B) — or the embedded demo on CPU.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ImportError:  # a subcommand whose optional part is missing stays out of the menu
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Names shown are escaped where they are built; this is the net under that: a character the console
    # cannot encode (PYTHONIOENCODING=utf-8 and a file name that is not UTF-8) prints escaped, never raises.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
