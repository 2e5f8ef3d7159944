"""Argument and error handling shared by subcommands."""

from __future__ import annotations

import argparse
import sys

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import ConfigError, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", nargs="?", help="YAML config file (optional: defaults, presets and --set suffice)"
    )
    p.add_argument("--config", dest="config_opt", metavar="FILE", help="same as the positional CONFIG")
    p.add_argument(
        "--preset", action="append", default=[], metavar="NAME", help="apply a preset (repeatable, in order)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one field, e.g. --set training.learning_rate=2e-4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig | None:
    """The composed, validated config; prints every problem by field and returns None on errors."""
    file = args.config_opt or args.config
    try:
        config, warnings = load_config(file=file, presets=args.preset, overrides=args.overrides)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return None
    for w in warnings:
        print(f"warning: {w.path}: {w.message}" if w.path else f"warning: {w.message}", file=sys.stderr)
    return config


def fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def show(path: object) -> str:
    """A path or name for the console, with newlines, control characters and undecodable bytes escaped."""
    from flux2_lora.display import escape

    return escape(str(path))
