"""One assessment of a training config, for every caller (pure Python: no torch).

``validate``, ``estimate``, ``train``, the API's endpoints, the Train tab, the sweep's vetting and
``autotune`` ask the same question (is this config valid here, does it fit, what should change?) and get
their answer from :func:`assess`: the errors by field, the warnings with their one-click fixes, the
estimate report with its verdicts and host RAM, and the recommendations. They only present it.

What the config alone cannot tell comes in as facts, each optional (an unknown fact makes no finding):
:class:`DatasetFacts` (a scan of the dataset folder, image headers only) and :class:`Environment` (what
this machine has: a CUDA GPU, the optional packages).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import ConfigIssue, validate_dict
from flux2_lora.memory.gpus import GPUS, Gpu, local_gpu, parse_gpu
from flux2_lora.memory.report import estimate_report
from flux2_lora.variants import is_demo

# Optional packages a config can need: the import name → the extra that installs it.
EXTRAS = {
    "bitsandbytes": "quantization",
    "torchao": "quantization",
    "wandb": "wandb",
    "prodigyopt": "optimizers",
}


@dataclass(frozen=True)
class Finding:
    """An error or a warning about one field ("" for the config as a whole), with its fix when there is
    one: in words, and as field values for one click."""

    field: str
    message: str
    fix: str = ""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message, "fix": self.fix, "overrides": self.overrides}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass(frozen=True)
class DatasetFacts:
    """What a scan of the dataset folder found; ``error`` when it cannot be used at all."""

    error: str | None = None
    num_images: int | None = None
    upscaled: tuple[tuple[str, int, int], ...] | None = None
    max_references: int | None = None  # the most references one target has (edit datasets)
    reference_error: str | None = None  # a reference folder or metadata.jsonl that cannot be used

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DatasetFacts | None:
        if not d:
            return None
        up = d.get("upscaled")
        return cls(
            error=d.get("error"),
            num_images=d.get("num_images"),
            upscaled=tuple((str(f), int(w), int(h)) for f, w, h in up) if up is not None else None,
            max_references=d.get("max_references"),
            reference_error=d.get("reference_error"),
        )


def dataset_facts(config: TrainConfig) -> DatasetFacts | None:
    """Scan ``dataset.path`` (image headers only); None for the demo datasets, whose facts are fixed."""
    from flux2_lora.data.demo_edit import is_demo_edit

    ds = config.dataset
    if is_demo(ds.path) or is_demo_edit(ds.path):
        return None
    path = Path(ds.path).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        return None  # unpacked at start; `flux2-lora dataset check` reads it
    from flux2_lora.config.warnings import upscaled_from_report
    from flux2_lora.data.scan import DatasetError, scan_dataset

    try:
        report = scan_dataset(
            path,
            caption_extension=ds.caption_extension,
            default_caption=ds.default_caption,
            reference_path=ds.reference_path,
            reference_max_pixels=ds.reference_max_pixels,
        )
    except DatasetError as e:
        return DatasetFacts(error=str(e).partition(": ")[2] or str(e))
    refs = report.references
    return DatasetFacts(
        num_images=len(report.items),
        upscaled=tuple(upscaled_from_report(report, ds.resolution)),
        max_references=max(refs.counts, default=0) if refs else 0,
        reference_error=report.reference_folder_error(),
    )


@dataclass(frozen=True)
class Environment:
    """What this machine has: a CUDA GPU (by nvidia-smi, no torch) and which optional packages import."""

    cuda: bool
    packages: frozenset[str]
    # bitsandbytes 0.46 and later run their 4- and 8-bit layers on the CPU too (older ones: CUDA only)
    bnb_cpu: bool = True

    def has(self, module: str) -> bool:
        return module in self.packages


# Packages to treat as missing (comma-separated import names): how the tests show what a machine without
# an extra is told, and how a user checks a config for such a machine.
WITHOUT_ENV = "FLUX2_LORA_WITHOUT"


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    hidden = {m.strip() for m in os.environ.get(WITHOUT_ENV, "").split(",")}
    found = frozenset(m for m in EXTRAS if m not in hidden and importlib.util.find_spec(m) is not None)
    return Environment(cuda=local_gpu() is not None, packages=found, bnb_cpu=_bnb_has_cpu_kernels(found))


BNB_CPU_SINCE = (0, 46)


def _bnb_has_cpu_kernels(found: frozenset[str]) -> bool:
    """From the installed version (no import: bitsandbytes imports torch)."""
    if "bitsandbytes" not in found:
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version("bitsandbytes").split(".")[:2]
        return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts) >= BNB_CPU_SINCE
    except (PackageNotFoundError, ValueError):
        return False


@dataclass
class Assessment:
    config: TrainConfig | None
    errors: list[Finding] = dataclasses.field(default_factory=list)
    warnings: list[Finding] = dataclasses.field(default_factory=list)
    report: dict[str, Any] | None = None  # the estimate report; None when the config cannot be estimated
    message: str = ""  # why there is no estimate

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def verdict(self) -> str | None:
        return self.report["gpu"]["verdict"] if self.report else None

    @property
    def blockers(self) -> list[str]:
        """Why Start stays disabled beyond the errors: a run that does not fit (an explicit "start anyway"
        overrides them: a GPU class is a guess)."""
        if not self.report:
            return []
        out = []
        gpu = self.report["gpu"]
        if gpu["verdict"] == "does_not_fit":
            out.append(
                f"the estimate ({self.report['total_gib']:.1f} GiB) does not fit {gpu.get('label', gpu['name'])}"
            )
        # Start trains on this machine: its host RAM is what counts (a CPU run here when there is no GPU).
        host = self.report.get("here", {}).get("host") or self.report["host"]
        if host.get("verdict") == "does_not_fit":
            out.append(
                f"host RAM: {host['machine_peak_gib']:.1f} GiB needed, {host['available_gib']:.1f} GiB available"
            )
        return out

    @property
    def start_reason(self) -> str:
        if self.errors:
            return "fix first: " + "; ".join(str(e) for e in self.errors[:3])
        return "; ".join(self.blockers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
            "available": self.report is not None,
            "report": self.report,
            "message": self.message,
            "verdict": self.verdict,
            "blockers": self.blockers,
            "can_start": self.ok and not self.blockers,
            "start_reason": self.start_reason,
        }


def _finding(issue: ConfigIssue) -> Finding:
    return Finding(issue.path, issue.message)


def assess(
    config: TrainConfig | Mapping[str, Any] | None,
    *,
    gpu: str | Gpu | None = None,
    dataset: DatasetFacts | None = None,
    env: Environment | None = None,
    recommendations: bool = True,
    num_processes: int | None = None,
) -> Assessment:
    """The one answer about ``config`` (a TrainConfig, or a possibly partial mapping as the UI sends).

    ``gpu``: the GPU class the verdict and fixes are about (a name, a size in GiB, or a Gpu); default the
    local GPU, else the first class. ``env`` defaults to this machine's :func:`environment`."""
    parsed: TrainConfig | None
    issues: list[ConfigIssue] = []
    if isinstance(config, TrainConfig):
        parsed = config
    else:
        parsed, issues = validate_dict(config)
    errors = [_finding(i) for i in issues if i.level == "error"]
    if parsed is None:
        return Assessment(None, errors, message=_no_estimate(errors))
    try:
        card = gpu if isinstance(gpu, Gpu) else _gpu(gpu)
    except ValueError as e:  # "-5", "nan", "banana": refused, never guessed
        errors.append(Finding("gpu", str(e)))
        return Assessment(parsed, errors, message=_no_estimate(errors))
    errors += model_errors(parsed)
    errors += dataset_errors(dataset)
    errors += reference_errors(parsed, dataset)
    errors += environment_errors(parsed, env or environment())
    if errors and any(e.field.startswith("model.") for e in errors):
        return Assessment(parsed, errors, message=_no_estimate(errors))
    report = estimate_report(parsed, gpu=card, recommendations=recommendations, num_processes=num_processes)
    from flux2_lora.config.warnings import common_mistakes

    warnings = [
        Finding(w.field, w.message, w.fix, w.overrides)
        for w in common_mistakes(
            parsed,
            num_images=dataset.num_images if dataset else None,
            upscaled=dataset.upscaled if dataset else None,
            verdict=report["gpu"]["verdict"],
            gpu_name=card.name,
        )
    ]
    return Assessment(parsed, errors, warnings, report)


def _gpu(name: str | None) -> Gpu:
    if not name:
        return local_gpu() or GPUS[0]
    return parse_gpu(name)


def _no_estimate(errors: list[Finding]) -> str:
    model = [e for e in errors if e.field.startswith("model.")]
    if model:
        return f"unknown model, so no estimate: {model[0].message}"
    named = ", ".join(dict.fromkeys(e.field or "config" for e in errors))
    return f"fix these fields to see the estimate: {named}"


def model_errors(c: TrainConfig) -> list[Finding]:
    """A model that cannot be sized: an unrecognised hub id or a folder that is not a FLUX.2 model (never
    silently sized as some default variant)."""
    from flux2_lora.local_model import ModelConfigError
    from flux2_lora.variants import resolve_model

    path = c.model.path.strip()
    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        return [
            Finding("model.path", f"{path} does not exist (neither a local diffusers folder nor a hub id)")
        ]
    local = Path(path).expanduser()
    if not is_demo(path) and local.is_dir() and not (local / "model_index.json").is_file():
        return [
            Finding(
                "model.path",
                f"{path} is not a diffusers pipeline folder (no model_index.json): give the folder a FLUX.2 "
                "pipeline was saved to, or a hub id",
            )
        ]
    try:
        resolve_model(path, c.model.variant)
    except ModelConfigError as e:
        f, _, msg = str(e).partition(": ")
        return [Finding(f, msg)]
    except ValueError as e:
        f, _, msg = str(e).partition(": ")
        return [Finding(f if f.startswith("model.") else "model.path", msg or str(e))]
    return []


def dataset_errors(facts: DatasetFacts | None) -> list[Finding]:
    if facts is None:
        return []
    if facts.error:
        return [Finding("dataset.path", facts.error)]
    if facts.num_images == 0:
        return [
            Finding(
                "dataset.path",
                "no usable images in the folder (PNG, JPEG, WebP; `flux2-lora dataset check` says why each "
                "file is skipped)",
            )
        ]
    return []


def reference_errors(c: TrainConfig, facts: DatasetFacts | None) -> list[Finding]:
    """An edit dataset the model cannot take: a reference folder that cannot be read, or more references
    per target than the variant takes."""
    from flux2_lora.data.references import count_problem
    from flux2_lora.variants import get_variant, resolve_model

    if facts is None:
        return []
    out: list[Finding] = []
    if facts.reference_error:
        out.append(Finding("dataset.reference_path", facts.reference_error))
    if facts.max_references:
        try:
            v = get_variant(resolve_model(c.model.path, c.model.variant).variant)
        except (ValueError, KeyError):  # an unknown model is model_errors' to report
            return out
        why = count_problem(facts.max_references, v.max_references, v.label)
        if why:
            out.append(
                Finding("dataset.reference_path", why, "remove references, or use a variant that takes more")
            )
    return out


def _needs(env: Environment, module: str, what: str, fld: str) -> list[Finding]:
    if env.has(module):
        return []
    extra = EXTRAS[module]
    return [Finding(fld, f"{what} needs {module}, which is not installed: pip install 'flux2-lora[{extra}]'")]


def environment_errors(c: TrainConfig, env: Environment) -> list[Finding]:
    """What this machine cannot run: CUDA-only choices without a CUDA GPU, packages that are missing."""
    out: list[Finding] = []
    device = c.model.device
    on_cuda = device.startswith("cuda") or (device == "auto" and env.cuda)
    if device.startswith("cuda") and not env.cuda:
        out.append(
            Finding(
                "model.device", f"{device!r} was asked for but this machine has no CUDA GPU; use auto or cpu"
            )
        )
    t, m = c.training, c.memory
    if t.optimizer == "adamw8bit":
        out += _needs(env, "bitsandbytes", "adamw8bit", "training.optimizer")
        if not on_cuda:
            out.append(
                Finding(
                    "training.optimizer",
                    "adamw8bit runs only on CUDA GPUs (bitsandbytes' 8-bit kernels) and this run is on the CPU",
                    "use adamw",
                    {"training.optimizer": "adamw"},
                )
            )
    if t.optimizer == "prodigy":
        out += _needs(env, "prodigyopt", "prodigy", "training.optimizer")
    # nf4 runs on the CPU too (bitsandbytes' CPU backend), int8 through torchao on any device.
    if m.quantization == "nf4":
        out += _needs(env, "bitsandbytes", "memory.quantization nf4", "memory.quantization")
        if env.has("bitsandbytes") and not on_cuda and not env.bnb_cpu:
            since = ".".join(map(str, BNB_CPU_SINCE))
            out.append(
                Finding(
                    "memory.quantization",
                    f"nf4 weights on the CPU need bitsandbytes' CPU kernels and the installed bitsandbytes has "
                    f"none (they came in {since})",
                    f"upgrade bitsandbytes to {since} or later, or use none",
                    {"memory.quantization": "none"},
                )
            )
    if m.quantization == "int8":
        out += _needs(env, "torchao", "memory.quantization int8", "memory.quantization")
    te_quant = m.text_encoder_quantization
    if te_quant != "none":
        fld = "memory.text_encoder_quantization"
        out += _needs(env, "bitsandbytes", f"{fld} {te_quant}", fld)
        if env.has("bitsandbytes") and (m.cpu_offload or not on_cuda) and not env.bnb_cpu:
            where = (
                "memory.cpu_offload keeps the text encoder on the CPU"
                if m.cpu_offload
                else "this run is on the CPU"
            )
            since = ".".join(map(str, BNB_CPU_SINCE))
            out.append(
                Finding(
                    fld,
                    f"a {te_quant} text encoder needs bitsandbytes' CPU kernels here ({where}) and the installed "
                    f"bitsandbytes has none (they came in {since})",
                    f"upgrade bitsandbytes to {since} or later, or use none",
                    {fld: "none"},
                )
            )
    if c.performance.float8:
        out += _needs(env, "torchao", "performance.float8", "performance.float8")
        if not on_cuda:
            out.append(
                Finding("performance.float8", "FP8 matrix products need a CUDA GPU (compute capability 8.9+)")
            )
    if c.performance.attention_backend not in ("auto", "math") and not on_cuda:
        out.append(
            Finding(
                "performance.attention_backend",
                f"{c.performance.attention_backend!r} needs a CUDA GPU; use auto",
                "use auto",
                {"performance.attention_backend": "auto"},
            )
        )
    if c.logging.wandb:
        out += _needs(env, "wandb", "logging.wandb", "logging.wandb")
    return out
