"""Command-line flags derived from a config section: ``--num-machines 2`` is ``--set distributed.num_machines=2``.

The options come from :func:`flux2_lora.cli.common.add_field_args` (the field's own help, choices and
default), so the CLI cannot drift from the schema; values go through the same validation as ``--set``
(errors name the field).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from flux2_lora.cli.common import add_field_args
from flux2_lora.config import SECTIONS


def _dest(section: str, key: str) -> str:
    return f"_schema__{section}__{key}"


def add_section_flags(p: argparse.ArgumentParser, section: str, keys: Sequence[str] | None = None) -> None:
    """One option per field of ``section`` (or just ``keys``): ``--key-name VALUE``, booleans as
    ``--key-name`` / ``--no-key-name``; each help ends with the field's config path."""
    model = SECTIONS[section]
    names = list(keys or model.model_fields)
    notes = {k: f"({section}.{k})" for k in names}
    add_field_args(p, model, names, notes=notes, dests={k: _dest(section, k) for k in names})


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
