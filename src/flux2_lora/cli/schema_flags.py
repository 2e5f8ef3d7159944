"""Command-line flags derived from a config section: ``--num-machines 2`` is ``--set distributed.num_machines=2``.

The flag's help is the field's own help text with its bounds or choices, so the CLI cannot drift from the
schema; values go through the same validation as ``--set`` (errors name the field).
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence

from annotated_types import Ge, Le

from flux2_lora.config import SECTIONS


def _dest(section: str, key: str) -> str:
    return f"_schema__{section}__{key}"


def add_section_flags(p: argparse.ArgumentParser, section: str, keys: Sequence[str] | None = None) -> None:
    """One flag per field of ``section`` (or just ``keys``): ``--key-name VALUE``, booleans as
    ``--key-name`` / ``--no-key-name``."""
    fields = SECTIONS[section].model_fields
    for key in keys or list(fields):
        info = fields[key]
        flag = "--" + key.replace("_", "-")
        help_text = (info.description or "").replace("%", "%%")
        bounds = [f"≥ {m.ge}" for m in info.metadata if isinstance(m, Ge)]
        bounds += [f"≤ {m.le}" for m in info.metadata if isinstance(m, Le)]
        extra = f" ({', '.join(bounds)}; {section}.{key})" if bounds else f" ({section}.{key})"
        dest = _dest(section, key)
        if info.annotation is bool:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, help=help_text + extra)
        elif typing.get_origin(info.annotation) is typing.Literal:
            choices = [str(c) for c in typing.get_args(info.annotation)]
            p.add_argument(flag, dest=dest, choices=choices, help=help_text + extra)
        else:
            metavar = "N" if info.annotation is int else "VALUE"
            p.add_argument(flag, dest=dest, metavar=metavar, help=help_text + extra)


def section_overrides(args: argparse.Namespace) -> list[str]:
    """The flags given, as ``section.key=value`` overrides (applied after --set, so they win)."""
    out = []
    for dest, value in vars(args).items():
        if not dest.startswith("_schema__") or value is None:
            continue
        _, section, key = dest.split("__", 2)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out.append(f"{section}.{key}={text}")
    return out
