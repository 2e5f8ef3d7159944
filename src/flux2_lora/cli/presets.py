"""``flux2-lora presets [NAME]``: list the shipped presets, or print one."""

from __future__ import annotations

import argparse

from flux2_lora.cli.common import fail
from flux2_lora.config.presets import list_presets, preset_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list presets, or print one as YAML")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name:
        text = preset_text(args.name)
        if text is None:
            names = ", ".join(p.name for p in list_presets())
            return fail(f"no preset {args.name!r}; available: {names}")
        print(text, end="")
        return 0
    for p in list_presets():
        print(f"{p.name:14} {p.kind:8} {p.description}")
    return 0
