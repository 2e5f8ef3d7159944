"""``flux2-lora validate``: check a config file without loading anything."""

from __future__ import annotations

import argparse

from flux2_lora.cli.common import add_config_args, config_from_args
from flux2_lora.config.io import to_yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a config: every error by field, no training")
    add_config_args(p)
    p.add_argument("--print", action="store_true", help="print the resolved config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None:
        return 2
    if args.print:
        print(to_yaml(config), end="")
    else:
        print("config is valid")
    return 0
