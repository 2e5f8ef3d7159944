"""Form fields derived from the pydantic config schema (pure: no Gradio, no torch).

Every widget of the Train tab comes from :data:`flux2_lora.config.SECTIONS`; adding a config field adds a
widget. Widgets are found by field path ("lora.rank"); values travel between them and the config dict.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen
from pydantic import BaseModel

from flux2_lora.config import SECTIONS, GenerationSettings
from flux2_lora.variants import REAL_VARIANTS, VARIANTS

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
    lines: int = 1  # text boxes: rows shown
    advanced: bool = False
    disabled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"

    def bounds_text(self) -> str:
        """The schema's bounds for people: "1 – 1,024", "> 0, ≤ 10"."""
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None and not (self.exclusive_min or self.exclusive_max):
            return f"{human_number(lo)} – {human_number(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.exclusive_min else '≥'} {human_number(lo)}")
        if hi is not None:
            parts.append(f"{'<' if self.exclusive_max else '≤'} {human_number(hi)}")
        return ", ".join(parts)


def human_number(v: float) -> str:
    """4294967295.0 → '4,294,967,295'; 1e-06 → '1e-06'; 0.9 → '0.9'."""
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:g}"


SECTION_TITLES = {
    "model": "Model",
    "dataset": "Dataset",
    "lora": "LoRA",
    "training": "Training",
    "memory": "Memory",
    "performance": "Speed (compile, FP8, attention)",
    "distributed": "GPUs and machines",
    "validation": "Validation samples",
    "output": "Output",
    "logging": "Logging",
}
# Labels where the field name alone reads badly; the rest come from _label.
LABELS = {
    "model.path": "Model",
    "model.variant": "Model family",
    "model.dtype": "Weight precision",
    "dataset.path": "Dataset",
    "dataset.resolution": "Resolution (px)",
    "dataset.caption_extension": "Caption file extension",
    "dataset.repeats": "Repeats per epoch",
    "dataset.bucketing": "Aspect-ratio buckets",
    "dataset.bucket_step": "Bucket step (px)",
    "dataset.keep_tags": "Keep first N tags",
    "lora.use_dora": "DoRA",
    "lora.target_modules": "Target layers",
    "training.adam_beta1": "Adam β1",
    "training.adam_beta2": "Adam β2",
    "training.adam_epsilon": "Adam ε",
    "training.momentum": "SGD momentum",
    "training.lr_scheduler": "LR schedule",
    "training.max_grad_norm": "Gradient clipping (max norm)",
    "training.logit_mean": "Logit-normal mean",
    "training.logit_std": "Logit-normal std",
    "training.guidance_scale": "Guidance while training ([dev])",
    "memory.quantization": "Quantization (frozen transformer)",
    "memory.cpu_offload": "CPU offload (text encoder)",
    "validation.enabled": "Sample during training",
    "validation.every_n_steps": "Sample every N steps",
    "validation.num_samples": "Images per prompt",
    "validation.num_inference_steps": "Denoising steps",
    "distributed.strategy": "Multi-GPU strategy",
    "distributed.num_processes": "GPUs (processes) per machine",
    "distributed.num_machines": "Machines",
    "distributed.machine_rank": "This machine's rank",
    "distributed.main_process_ip": "Main machine address",
    "distributed.main_process_port": "Main machine port",
    "distributed.fsdp_reshard_after_forward": "FSDP: reshard after forward",
    "distributed.fsdp_cpu_offload": "FSDP: offload shards to host RAM",
    "output.dir": "Output folder",
    "output.checkpoint_every": "Checkpoint every N steps",
    "output.max_checkpoints": "Checkpoints kept",
    "output.save_dtype": "LoRA file precision",
    "output.export_comfyui": "Also export for ComfyUI",
    "logging.tensorboard": "TensorBoard",
    "logging.wandb": "Weights & Biases",
    "logging.wandb_project": "W&B project",
    "logging.log_every": "Log every N steps",
    # GenerationSettings, the Test LoRA tab's fields
    "generate.scale": "LoRA scale",
    "generate.steps": "Denoising steps",
    "generate.guidance": "Guidance",
    "generate.resolution": "Resolution (px)",
}
_WORDS = {
    "lora": "LoRA",
    "dora": "DoRA",
    "vae": "VAE",
    "cpu": "CPU",
    "gpu": "GPU",
    "lr": "LR",
    "wandb": "W&B",
    "comfyui": "ComfyUI",
    "ema": "EMA",
    "id": "ID",
}


def _label(section: str, key: str) -> str:
    if f"{section}.{key}" in LABELS:
        return LABELS[f"{section}.{key}"]
    words = [_WORDS.get(w, w) for w in key.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def _number(bound: object) -> float:
    """A schema bound (annotated_types types it as merely comparable; the schema's are numbers)."""
    if not isinstance(bound, (int, float)):
        raise TypeError(f"a non-numeric bound in the schema: {bound!r}")
    return float(bound)


def _spec(section: str, key: str, info: Any) -> FieldSpec:
    ann = info.annotation
    ui: dict[str, Any] = dict((info.json_schema_extra or {}).get("ui", {}))
    lo = hi = None
    ex_lo = ex_hi = False
    for m in info.metadata:
        if isinstance(m, Ge):
            lo = _number(m.ge)
        elif isinstance(m, Gt):
            lo, ex_lo = _number(m.gt), True
        elif isinstance(m, Le):
            hi = _number(m.le)
        elif isinstance(m, Lt):
            hi, ex_hi = _number(m.lt), True
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
    elif ui.get("yaml"):  # a list of mappings (dataset.extra): edited as YAML, one entry per line
        kind = "str"
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
        label=_label(section, key),
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
        lines=int(ui.get("lines", 1)),
        advanced=bool(ui.get("advanced")),
        disabled=bool(ui.get("disabled")),
        extra=(
            {"yaml": True}
            if ui.get("yaml")
            else {"int_choices": ann is int}
            if kind == "choice"
            else {"float_items": typing.get_args(ann) == (float,)}
            if kind == "lines"
            else {}
        ),
    )


def swap_limits() -> dict[str, int]:
    """The most blocks memory.blocks_to_swap can swap, per variant: all blocks but the two GPU buffers."""
    return {
        v: VARIANTS[v].transformer.num_layers + VARIANTS[v].transformer.num_single_layers - 2
        for v in REAL_VARIANTS
    }


def _slider(spec: FieldSpec) -> FieldSpec:
    """Fields shown as a slider: the swap count, over the schema's whole range (never narrower: a count
    beyond a variant's blocks is refused by validation, which says why); ``extra["max_by_variant"]`` has
    each variant's own maximum. Its memory and time effect shows in the estimate panel, which re-estimates
    on every change of a form widget."""
    if spec.path != "memory.blocks_to_swap":
        return spec
    limits = swap_limits()
    return replace(
        spec,
        ui_min=spec.minimum if spec.minimum is not None else 0,
        ui_max=spec.maximum if spec.maximum is not None else max(limits.values()),
        step=1,
        extra={**spec.extra, "slider": True, "max_by_variant": limits},
    )


def model_fields(model: type[BaseModel], section: str) -> tuple[FieldSpec, ...]:
    """The fields of one section (or of a model built like one, e.g. GenerationSettings), in order."""
    return tuple(_slider(_spec(section, key, info)) for key, info in model.model_fields.items())


@lru_cache(maxsize=1)
def form_fields() -> tuple[FieldSpec, ...]:
    """All config fields, section by section, in schema order."""
    return tuple(spec for section, model in SECTIONS.items() for spec in model_fields(model, section))


@lru_cache(maxsize=1)
def generation_fields() -> dict[str, FieldSpec]:
    """The Test LoRA tab's fields (GenerationSettings) by name."""
    return {s.key: s for s in model_fields(GenerationSettings, "generate")}


def section_docs() -> dict[str, str]:
    return {name: (model.__doc__ or "").strip() for name, model in SECTIONS.items()}


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget shows it."""
    if spec.extra.get("yaml"):
        return yaml_lines(value)
    if spec.kind == "lines":
        return "\n".join(str(v) for v in (value or []))
    if spec.kind == "choice" and spec.extra.get("int_choices"):
        return str(value)  # dropdowns with typed values hold strings; converted back in from_widget
    return value


def from_widget(spec: FieldSpec, value: Any) -> Any:
    """A widget value as the config wants it; unparseable input is passed on for validation to name."""
    if spec.extra.get("yaml"):
        return from_yaml_lines(value)
    if spec.kind == "lines":
        items = [ln.strip() for ln in str(value or "").splitlines() if ln.strip()]
        if spec.extra.get("float_items"):  # numbers, one per line; a non-number is left for validation
            return [_float_or_text(x) for x in items]
        return items
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


def config_from_values(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Widget values by field path ("lora.rank") as a config dict."""
    specs = {s.path: s for s in form_fields()}
    out: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        spec = specs[path]
        out.setdefault(spec.section, {})[spec.key] = from_widget(spec, value)
    return out


def values_from_config(data: dict[str, Any]) -> dict[str, Any]:
    """A (possibly partial) config dict as widget values by field path; missing keys take the default."""
    out = {}
    for spec in form_fields():
        section = data.get(spec.section) or {}
        out[spec.path] = to_widget(spec, section.get(spec.key, spec.default))
    return out


def yaml_lines(value: Any) -> str:
    """A list of mappings as YAML, one flow mapping per line; unset (None) keys are left out."""
    import yaml

    if not value:
        return ""
    if not isinstance(value, list):
        return str(value)
    rows = [{k: v for k, v in e.items() if v is not None} if isinstance(e, dict) else e for e in value]
    return yaml.safe_dump(rows, default_flow_style=None, sort_keys=False, allow_unicode=True, width=10_000)


def from_yaml_lines(value: Any) -> Any:
    """The YAML text of a list field back as a list; text that is not YAML is passed on as text (the
    config's validation then says the field must be a list)."""
    from flux2_lora.config.io import load_yaml_text

    text = str(value or "").strip()
    if not text:
        return []
    data, problems = load_yaml_text(text)
    return text if problems else data


def _float_or_text(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text
