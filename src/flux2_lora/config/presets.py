"""Presets: short YAML deltas over the config defaults, shipped with the package (no torch).

The first line of each file is ``# <kind>: <description>``; kinds are demo, quick, lora and model.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from flux2_lora.config.io import ConfigIssue, load_yaml_text

_DIR = "preset_files"


@dataclass(frozen=True)
class PresetInfo:
    name: str
    kind: str
    description: str


def _files() -> dict[str, Any]:
    root = resources.files("flux2_lora.config").joinpath(_DIR)
    return {p.name[: -len(".yaml")]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def list_presets() -> list[PresetInfo]:
    order = {"demo": 0, "quick": 1, "lora": 2, "model": 3}
    out = []
    for name, path in _files().items():
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
        kind, _, desc = first.partition(":")
        out.append(PresetInfo(name, kind.strip(), desc.strip()))
    return sorted(out, key=lambda p: (order.get(p.kind, 9), p.name))


def preset_text(name: str) -> str | None:
    path = _files().get(name)
    return path.read_text(encoding="utf-8") if path is not None else None


def load_preset(name: str) -> tuple[dict[str, Any] | None, list[ConfigIssue]]:
    text = preset_text(name)
    if text is None:
        known = ", ".join(p.name for p in list_presets())
        return None, [ConfigIssue("", f"unknown preset {name!r} (known: {known})")]
    data, problems = load_yaml_text(text, f"preset {name}")
    if problems:
        return None, problems
    data = data or {}
    if not isinstance(data, dict):
        return None, [ConfigIssue("", f"preset {name!r} is not a mapping")]
    return data, []
