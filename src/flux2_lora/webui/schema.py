"""Form fields derived from the pydantic config schema (pure: no Gradio, no torch).

Every widget of the Training tab comes from :data:`flux2_lora.config.SECTIONS`; adding a config field
adds a widget. Values travel between the form (a flat list, one entry per field) and the config dict.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen

from flux2_lora.config import SECTIONS, TrainConfig

Kind = Literal["bool", "int", "float", "str", "choice", "lines"]


@dataclass(frozen=True)
class FieldSpec:
    section: str
    key: str
    kind: Kind
    label: str
    help: str
    default: Any
    choices: tuple[Any, ...] = ()
    custom: bool = False  # a dropdown that also accepts a typed value
    minimum: float | None = None  # schema bounds (validation)
    maximum: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    ui_min: float | None = None  # slider range hints (may be narrower than the bounds)
    ui_max: float | None = None
    step: float | None = None
    log: bool = False
    advanced: bool = False
    disabled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def slider(self) -> bool:
        """A slider only where the range is closed and linear; log-scaled values read better typed."""
        lo = self.ui_min if self.ui_min is not None else self.minimum
        hi = self.ui_max if self.ui_max is not None else self.maximum
        return (
            self.kind in ("int", "float")
            and not self.log
            and lo is not None
            and hi is not None
            and (self.step is not None or self.ui_max is not None)
        )

    def bounds_text(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.exclusive_min else '≥'} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"{'<' if self.exclusive_max else '≤'} {self.maximum:g}")
        return ", ".join(parts)


def _label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _spec(section: str, key: str, info: Any) -> FieldSpec:
    ann = info.annotation
    ui: dict[str, Any] = dict((info.json_schema_extra or {}).get("ui", {}))
    lo = hi = None
    ex_lo = ex_hi = False
    for m in info.metadata:
        if isinstance(m, Ge):
            lo = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, Gt):
            lo, ex_lo = float(m.gt), True  # type: ignore[arg-type]
        elif isinstance(m, Le):
            hi = float(m.le)  # type: ignore[arg-type]
        elif isinstance(m, Lt):
            hi, ex_hi = float(m.lt), True  # type: ignore[arg-type]
        elif isinstance(m, MaxLen):
            pass
    choices: tuple[Any, ...] = ()
    origin = typing.get_origin(ann)
    if origin is Literal:
        kind: Kind = "choice"
        choices = typing.get_args(ann)
    elif ann is bool:
        kind = "bool"
    elif ann is int:
        kind = "int"
    elif ann is float:
        kind = "float"
    elif origin is list:
        kind = "lines"
    else:
        kind = "str"
    if "choices" in ui and kind in ("str", "int"):
        choices = tuple(ui["choices"])
        kind = "choice"
    custom = bool(ui.get("custom")) or (kind == "choice" and ann in (str, int))
    default = info.get_default(call_default_factory=True)
    return FieldSpec(
        section=section,
        key=key,
        kind=kind,
        label=_label(key),
        help=info.description or "",
        default=default,
        choices=choices,
        custom=custom,
        minimum=lo,
        maximum=hi,
        exclusive_min=ex_lo,
        exclusive_max=ex_hi,
        ui_min=ui.get("min"),
        ui_max=ui.get("max"),
        step=ui.get("step"),
        log=bool(ui.get("log")),
        advanced=bool(ui.get("advanced")),
        disabled=bool(ui.get("disabled")),
        extra={"int_choices": ann is int} if kind == "choice" else {},
    )


@lru_cache(maxsize=1)
def form_fields() -> tuple[FieldSpec, ...]:
    """All config fields, section by section, in schema order."""
    return tuple(
        _spec(section, key, info)
        for section, model in SECTIONS.items()
        for key, info in model.model_fields.items()
    )


def section_docs() -> dict[str, str]:
    return {name: (model.__doc__ or "").strip() for name, model in SECTIONS.items()}


def default_dict() -> dict[str, dict[str, Any]]:
    return TrainConfig().model_dump(mode="json")


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget shows it."""
    if spec.kind == "lines":
        return "\n".join(str(v) for v in (value or []))
    if spec.kind == "choice" and spec.extra.get("int_choices"):
        return str(value)  # dropdowns with typed values hold strings; converted back in from_widget
    return value


def from_widget(spec: FieldSpec, value: Any) -> Any:
    """A widget value as the config wants it; unparseable input is passed on for validation to name."""
    if spec.kind == "lines":
        return [ln.strip() for ln in str(value or "").splitlines() if ln.strip()]
    if spec.kind == "int" or (spec.kind == "choice" and spec.extra.get("int_choices")):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return value
    if spec.kind == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def values_to_dict(values: list[Any] | tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """The flat form values (in :func:`form_fields` order) as a config dict."""
    out: dict[str, dict[str, Any]] = {}
    for spec, value in zip(form_fields(), values, strict=True):
        out.setdefault(spec.section, {})[spec.key] = from_widget(spec, value)
    return out


def dict_to_values(data: dict[str, Any]) -> list[Any]:
    """A (possibly partial) config dict as flat form values; missing keys take the schema default."""
    out = []
    for spec in form_fields():
        section = data.get(spec.section) or {}
        out.append(to_widget(spec, section.get(spec.key, spec.default)))
    return out


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    section, _, key = path.partition(".")
    data.setdefault(section, {})[key] = value
