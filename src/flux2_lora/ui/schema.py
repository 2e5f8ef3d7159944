"""The training form, derived from the config schema (pure: no gradio, no torch).

Every widget comes from a field of :class:`~flux2_lora.config.TrainConfig`: its label from the field
name, its info text and bounds from the field, its kind and slider range from the field's ``ui`` hints.
There is no second list of fields to keep in sync; a new config field shows up in the UI by itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt

from ..config import SECTIONS, TrainConfig
from ..config_io import ConfigIssue, to_dict

Kind = Literal["checkbox", "dropdown", "multiselect", "slider", "number", "text", "lines"]

# Casing of words in labels derived from field names; only spelling, never which fields exist.
_WORDS = {
    "lr": "LR",
    "lora": "LoRA",
    "dora": "DoRA",
    "vae": "VAE",
    "cpu": "CPU",
    "gpu": "GPU",
    "wandb": "W&B",
    "comfyui": "ComfyUI",
    "dtype": "dtype",
    "adam": "Adam",
    "n": "N",
    "dir": "directory",
}
SECTION_TITLES = {"lora": "LoRA"}


@dataclass(frozen=True)
class FieldSpec:
    """What the UI needs to draw and read one config field."""

    section: str
    key: str
    kind: Kind
    label: str
    info: str
    default: Any
    py_type: type
    choices: tuple[Any, ...] = ()
    custom: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    advanced: bool = False
    disabled: bool = False

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"

    def to_widget(self, value: Any) -> Any:
        """A config value as the widget shows it."""
        if self.kind == "lines":
            return "\n".join(value or [])
        return value

    def from_widget(self, value: Any) -> Any:
        """A widget value as the config reads it; anything odd is passed on for pydantic to reject by field."""
        if self.kind == "lines":
            return [line for line in str(value or "").splitlines() if line.strip()]
        if self.kind == "multiselect":
            if value is None:
                return []
            return [value] if isinstance(value, str) else list(value)
        if self.kind == "checkbox":
            return bool(value)
        if self.py_type in (int, float) and isinstance(value, str):
            text = value.strip()
            try:  # a custom dropdown value arrives as text ("1280")
                number = float(text)
            except ValueError:
                return text
            return int(number) if self.py_type is int and number.is_integer() else number
        if self.py_type is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def label_for(key: str) -> str:
    words = [_WORDS.get(w, w) for w in key.split("_")]
    text = " ".join(words)
    return text[0].upper() + text[1:]


def section_title(section: str) -> str:
    return SECTION_TITLES.get(section, section.capitalize())


def section_doc(section: str) -> str:
    return (SECTIONS[section].__doc__ or "").strip()


def _bounds(metadata: Sequence[Any]) -> tuple[float | None, float | None, bool, bool]:
    lo = hi = None
    lo_open = hi_open = False
    for m in metadata:
        if isinstance(m, Ge):
            lo = float(m.ge)
        elif isinstance(m, Gt):
            lo, lo_open = float(m.gt), True
        elif isinstance(m, Le):
            hi = float(m.le)
        elif isinstance(m, Lt):
            hi, hi_open = float(m.lt), True
    return lo, hi, lo_open, hi_open


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:g}"
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def _bounds_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is None and hi is None:
        return ""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {_fmt(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '≤'} {_fmt(hi)}")
    return "Allowed: " + ", ".join(parts) + "."


def _spec(section: str, key: str) -> FieldSpec:
    info = SECTIONS[section].model_fields[key]
    ui: dict[str, Any] = dict((info.json_schema_extra or {}).get("ui", {}))  # type: ignore[union-attr]
    ann = info.annotation
    default = info.get_default(call_default_factory=True)
    help_text = info.description or ""
    common = {
        "section": section,
        "key": key,
        "label": label_for(key),
        "default": default,
        "advanced": bool(ui.get("advanced")),
        "disabled": bool(ui.get("disabled")),
    }
    if ann is bool:
        return FieldSpec(kind="checkbox", info=help_text, py_type=bool, **common)
    if get_origin(ann) is Literal:
        choices = get_args(ann)
        return FieldSpec(
            kind="dropdown", info=help_text, py_type=type(choices[0]), choices=choices, **common
        )
    if get_origin(ann) is list:
        if ui.get("choices"):
            return FieldSpec(
                kind="multiselect",
                info=help_text,
                py_type=list,
                choices=tuple(ui["choices"]),
                custom=True,
                **common,
            )
        return FieldSpec(kind="lines", info=help_text, py_type=list, **common)
    lo, hi, lo_open, hi_open = _bounds(info.metadata)
    if ann in (int, float):
        assert isinstance(ann, type)
        text = " ".join(t for t in (help_text, _bounds_text(lo, hi, lo_open, hi_open)) if t)
        if ui.get("choices"):
            return FieldSpec(
                kind="dropdown",
                info=text,
                py_type=ann,
                choices=tuple(ui["choices"]),
                custom=bool(ui.get("custom")),
                minimum=lo,
                maximum=hi,
                **common,
            )
        ranged = any(k in ui for k in ("min", "max", "step"))
        if ui.get("log") or not ranged:
            if ui.get("log"):
                text += f" Usual range {_fmt(ui['min'])} – {_fmt(ui['max'])} (log scale)."
            return FieldSpec(kind="number", info=text, py_type=ann, minimum=lo, maximum=hi, **common)
        s_lo = float(ui.get("min", lo if lo is not None else 0.0))
        s_hi = float(ui.get("max", hi if hi is not None else s_lo + 100))
        step = float(ui.get("step", 1 if ann is int else (s_hi - s_lo) / 100))
        return FieldSpec(
            kind="slider", info=text, py_type=ann, minimum=s_lo, maximum=s_hi, step=step, **common
        )
    if ui.get("choices"):
        return FieldSpec(
            kind="dropdown",
            info=help_text,
            py_type=str,
            choices=tuple(ui["choices"]),
            custom=True,
            **common,
        )
    return FieldSpec(kind="text", info=help_text, py_type=str, **common)


def field_specs() -> list[FieldSpec]:
    """Every config field, in schema order (sections, then fields)."""
    return [_spec(section, key) for section, cls in SECTIONS.items() for key in cls.model_fields]


SPECS: list[FieldSpec] = field_specs()
PATHS: list[str] = [s.path for s in SPECS]
BY_PATH: dict[str, FieldSpec] = {s.path: s for s in SPECS}


# --------------------------------------------------------------------------- form values ↔ config


def form_to_data(values: Sequence[Any]) -> dict[str, Any]:
    """Widget values (in ``PATHS`` order) → the nested mapping ``validate_dict`` reads."""
    if len(values) != len(SPECS):
        raise ValueError(f"expected {len(SPECS)} form values, got {len(values)}")
    data: dict[str, dict[str, Any]] = {}
    for spec, value in zip(SPECS, values):
        data.setdefault(spec.section, {})[spec.key] = spec.from_widget(value)
    return data


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """{section: {key: v}} → {"section.key": v}; unknown entries are dropped (validation reports them)."""
    out: dict[str, Any] = {}
    for section, values in data.items():
        if isinstance(values, Mapping):
            for key, value in values.items():
                path = f"{section}.{key}"
                if path in BY_PATH:
                    out[path] = value
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for path, value in flat.items():
        section, _, key = path.partition(".")
        out.setdefault(section, {})[key] = value
    return out


def config_to_form(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A config (or a partial mapping) → {path: widget value} for the fields it sets."""
    data = to_dict(config) if isinstance(config, TrainConfig) else config
    return {path: BY_PATH[path].to_widget(v) for path, v in flatten(data).items()}


def default_form() -> dict[str, Any]:
    return config_to_form(TrainConfig())


def issue_field(issue: ConfigIssue) -> str | None:
    """The form field an issue belongs to (list items like ``validation.prompts.0`` map to the list)."""
    parts = issue.path.split(".")
    path = ".".join(parts[:2])
    return path if path in BY_PATH else None


def slider_range(spec: FieldSpec, value: Any) -> tuple[float, float, float] | None:
    """A wider (min, max, step) when a value from a preset or file lies outside the slider's range.

    Gradio refuses slider values outside its range, but the range comes from the ``ui`` hint (the
    usual values), which is narrower than what the schema allows.
    """
    if spec.kind != "slider" or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    assert spec.minimum is not None and spec.maximum is not None and spec.step is not None
    lo, hi, step = spec.minimum, spec.maximum, spec.step
    if lo <= value <= hi and _on_grid(value, lo, step):
        return None
    lo, hi = min(lo, float(value)), max(hi, float(value))
    if not _on_grid(value, lo, step):
        step = 1.0 if spec.py_type is int else min(step, 0.01)
    return lo, hi, step


def _on_grid(value: float, lo: float, step: float) -> bool:
    k = (value - lo) / step
    return math.isclose(k, round(k), abs_tol=1e-6)
