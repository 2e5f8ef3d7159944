"""What the UI does with a config: validate, estimate (with warnings), presets, one-click fixes, templates.

Plain functions over JSON-able dicts (no Gradio, no torch). A config arrives as a (possibly partial)
mapping of sections and is validated with the one schema, so the UI, the API and the CLI agree.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import deep_merge, read_yaml, to_dict, to_yaml, validate_dict
from flux2_lora.config.presets import list_presets, load_preset
from flux2_lora.variants import is_demo
from flux2_lora.webui.paths import AppPaths, PathRefused, resolve_inside

QUICK_PRESETS = {"Fast": "fast", "High Quality": "high-quality", "Low VRAM": "low-vram"}
MODEL_PRESETS = {"FLUX.2 [dev]": "dev", "FLUX.2 [klein] 4B": "klein-4b", "FLUX.2 [klein] 9B": "klein-9b"}
FIRST_PRESET = "quickstart"  # what a new page shows
# What a preset that starts from defaults keeps of the form: the model, the data and where the run goes.
KEPT_BY_PRESETS = ("model", "dataset", "output", "logging", "validation.prompts")
log = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def issues_json(issues: list[Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    errors = [{"field": i.path, "message": i.message} for i in issues if i.level == "error"]
    warnings = [{"field": i.path, "message": i.message} for i in issues if i.level != "error"]
    return errors, warnings


def default_dict() -> dict[str, dict[str, Any]]:
    return TrainConfig().model_dump(mode="json")


def initial_dict() -> dict[str, Any]:
    """The form's first values: the demo (its dataset with its own model, at its images' size), which
    starts as it is and opens without warnings; the model presets are one click away. A real model
    paired with the demo's 128 px images would open with a warning per image (issue 22)."""
    delta, _ = load_preset(FIRST_PRESET)
    return sync_precision(deep_merge(default_dict(), delta or {}))


def sync_precision(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the training.mixed_precision of an earlier version (a saved template, an API
    client): mixed precision follows model.dtype, which the form shows beside it."""
    training = config.get("training")
    if isinstance(training, dict):
        training.pop("mixed_precision", None)
    return config


def schema_check(config: dict[str, Any]) -> dict[str, Any]:
    """The schema alone (a template to save): {ok, errors: [{field, message}], warnings, config}."""
    parsed, issues = validate_dict(config)
    errors, warnings = issues_json(issues)
    return {
        "ok": parsed is not None,
        "errors": errors,
        "warnings": warnings,
        "config": to_dict(parsed) if parsed else None,
    }


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{s}.{k}": v for s, sec in (config or {}).items() if isinstance(sec, dict) for k, v in sec.items()
    }


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge {"section.key": value} into the config (a recommendation's or warning's one-click fix)."""
    out = deep_merge(config, {})
    for path, value in overrides.items():
        section, _, key = path.partition(".")
        out.setdefault(section, {})[key] = value
    if "model.dtype" in overrides:
        sync_precision(out)
    return out


def _kept(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in KEPT_BY_PRESETS:
        section, _, key = item.partition(".")
        src = (config or {}).get(section) or {}
        if key:
            if key in src:
                out.setdefault(section, {})[key] = src[key]
        elif src:
            out[section] = dict(src)
    return out


def apply_preset(config: dict[str, Any], name: str, stack: bool = False) -> dict[str, Any]:
    """{ok, config, errors, description, kind, changes: [{field, old, new}]}.

    Model presets change the model on top of the current values. Quick and LoRA presets start from the
    defaults (keeping the model, data, output folder and prompts) unless ``stack``, so two presets in a row
    never leave the first one's settings behind unseen; ``changes`` lists every field the form changes."""
    name = {**QUICK_PRESETS, **MODEL_PRESETS}.get(name, name)
    delta, problems = load_preset(name)
    info = {p.name: p for p in list_presets()}
    if delta is None or name not in info:
        known = ", ".join(info)
        return {
            "ok": False,
            "config": config,
            "errors": [{"field": "", "message": f"unknown preset {name!r} ({known})"}],
            "changes": [],
        }
    kind = info[name].kind
    current = config or {}
    if kind == "model" or stack:
        base = deep_merge(default_dict(), current)
    elif kind == "demo":
        base = default_dict()
    else:
        base = deep_merge(default_dict(), _kept(current))
    merged = sync_precision(deep_merge(base, delta))
    before, after = flatten(deep_merge(default_dict(), current)), flatten(merged)
    changes = [{"field": k, "old": before.get(k), "new": v} for k, v in after.items() if before.get(k) != v]
    return {
        "ok": True,
        "config": merged,
        "errors": issues_json(problems)[0],
        "description": info[name].description,
        "kind": kind,
        "changes": changes,
    }


def presets() -> list[dict[str, str]]:
    return [{"name": p.name, "kind": p.kind, "description": p.description} for p in list_presets()]


# ---- model --------------------------------------------------------------------------------------------


def check_model(paths: AppPaths, path: str, variant: str = "auto") -> dict[str, Any]:
    """{ok, known, source, variant, title, message}: which model a path names, without loading it."""
    from flux2_lora.variants import VARIANTS, resolve_model

    try:
        source = paths.model_source(path)
    except PathRefused as e:
        return {"ok": False, "known": False, "message": e.message}
    p = Path(source).expanduser()
    if source != "demo" and p.is_absolute() and not p.exists():
        return {
            "ok": False,
            "known": False,
            "message": f"{path} does not exist (give a local diffusers folder, a hub id like org/name, or demo)",
        }
    try:
        r = resolve_model(source, variant or "auto")
    except (ValueError, TypeError, KeyError, OSError) as e:
        return {"ok": False, "known": False, "message": f"unknown model: {e}"}
    params = _transformer_params(r.arch)
    title = VARIANTS[r.variant].title if r.variant in VARIANTS else r.variant
    where = {
        "local": "local folder",
        "hub-name": "hub id",
        "given": "hub id, variant given",
        "demo": "built in",
    }
    return {
        "ok": True,
        "known": True,
        "source": source,
        "variant": r.variant,
        "title": title,
        "transformer_params": params,
        "message": f"{title}: transformer ≈ {human_count(params)} parameters ({where.get(r.source, r.source)})",
    }


def _transformer_params(arch: Any) -> int | None:
    try:
        from flux2_lora.targets import enumerate_linears

        return int(sum(s.in_features * s.out_features for s in enumerate_linears(arch)))
    except Exception:  # a crafted config.json: the count is decoration, the check above already passed
        return None


def human_count(n: int | None) -> str:
    if not n:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# ---- estimate -----------------------------------------------------------------------------------------


def gpu_choices() -> list[str]:
    """The GPU classes, the local GPU first when there is one (the default choice)."""
    from flux2_lora.memory import GPUS, local_gpu

    local = local_gpu()
    return ([local.name] if local else []) + [g.name for g in GPUS]


def dataset_facts(
    paths: AppPaths, config: dict[str, Any], check: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """What the assessment needs of the form's dataset ({path, num_images, upscaled, error}), from the UI's
    own check (its paths confined to the allowed folders); ``check`` is a cached one, used only if it is
    about the same path. None for the demo dataset, whose facts are fixed (as for the CLI)."""
    from flux2_lora.webui.datasets import check_dataset

    section = (config or {}).get("dataset") if isinstance(config, dict) else None
    section = section if isinstance(section, dict) else {}
    path = str(section.get("path") or "demo")
    if is_demo(path):
        return None
    if check is None or check.get("path") != path:
        check = facts_of_check(path, check_dataset(paths, config))
    return check


def facts_of_check(path: str, r: dict[str, Any]) -> dict[str, Any] | None:
    """A dataset check's result as :meth:`DatasetFacts.from_dict` reads it (with the path it is about)."""
    if is_demo(path):
        return None
    if "report" in r:
        return {"path": path, "num_images": r.get("num_images"), "upscaled": r.get("upscaled")}
    return {"path": path, "error": r.get("message") or "cannot be read"}


def _labels() -> dict[str, str]:
    from flux2_lora.webui.schema import form_fields

    return {s.path: s.label for s in form_fields()}


def estimate(
    paths: AppPaths,
    config: dict[str, Any],
    gpu: str | None = None,
    dataset: dict[str, Any] | None = None,
    with_recommendations: bool = True,
) -> dict[str, Any]:
    """The assessment (:func:`flux2_lora.assess.assess`) as the UI shows it: its ``to_dict()`` plus
    ``model`` (the model panel's check). The UI only confines the paths first: the model path and the
    dataset (checked here, or ``dataset``, a cached :func:`dataset_facts` of the same path)."""
    from flux2_lora.assess import DatasetFacts, assess

    model_sec = (config or {}).get("model") if isinstance(config, dict) else None
    model_sec = model_sec if isinstance(model_sec, dict) else {}
    model_path = str(model_sec.get("path") or "demo")
    model = check_model(paths, model_path, str(model_sec.get("variant") or "auto"))
    try:
        source = paths.model_source(model_path)
    except PathRefused as e:
        return _refused(model, e.field, e.message)
    cfg = deep_merge(config or {}, {"model": {"path": source}}) if model_sec.get("path") else config
    try:
        facts = dataset_facts(paths, cfg, dataset)
        a = assess(
            cfg,
            gpu=gpu or None,
            dataset=DatasetFacts.from_dict(facts),
            recommendations=with_recommendations,
        )
    except Exception as e:  # a bug, not bad input (assess names every bad field): said as such, logged
        log.exception("assessment failed")
        return _refused(model, "", f"internal error: {type(e).__name__}: {e}")
    out = a.to_dict()
    if a.errors and not a.report and not a.message.startswith("unknown model"):
        labels = _labels()
        named = ", ".join(dict.fromkeys(labels.get(e.field, e.field or "config") for e in a.errors))
        out["message"] = f"fix the fields marked in red to see the estimate ({named})"
    if out["report"] is not None and not with_recommendations:
        out["report"].pop("recommendations", None)
    return {**out, "model": model}


def _refused(model: dict[str, Any], field: str, message: str) -> dict[str, Any]:
    text = f"{field}: {message}" if field else message
    return {
        "ok": False,
        "errors": [{"field": field, "message": message, "fix": "", "overrides": {}}],
        "warnings": [],
        "available": False,
        "report": None,
        "message": text,
        "verdict": None,
        "blockers": [],
        "can_start": False,
        "start_reason": text,
        "model": model,
    }


def validate(paths: AppPaths, config: dict[str, Any]) -> dict[str, Any]:
    """The assessment without the fixes search, and ``config`` (normalised) when it is valid."""
    out = estimate(paths, config, None, with_recommendations=False)
    parsed, _ = validate_dict(config) if out["ok"] else (None, [])
    return {**out, "config": to_dict(parsed) if parsed else None}


def recommend(paths: AppPaths, config: dict[str, Any], gpu: str | None = None) -> list[dict[str, Any]]:
    """Change sets that make the config fit the GPU (the slow part of an estimate, fetched after it): the
    assessment's own."""
    r = estimate(paths, config, gpu, with_recommendations=True)
    return list((r.get("report") or {}).get("recommendations") or [])


# ---- timestep density ---------------------------------------------------------------------------------


def timestep_density(config: dict[str, Any], points: int = 120) -> list[dict[str, float]]:
    """The density of training σ as a curve (analytic; exact quadrature for 'mode')."""
    from flux2_lora.config import TrainingSection
    from flux2_lora.timesteps import density_curve, image_tokens_for

    try:
        t = TrainingSection.model_validate({**((config or {}).get("training") or {})})
        res = int(((config or {}).get("dataset") or {}).get("resolution", 1024))
        curve = density_curve(t, image_tokens_for(res), points=points)
    except Exception:  # invalid fields are reported by validate; the plot just stays empty
        return []
    return [{"sigma": round(s, 4), "density": round(d, 4)} for s, d in curve if math.isfinite(d)]


# ---- templates ----------------------------------------------------------------------------------------


def _template_file(paths: AppPaths, name: str) -> Path | None:
    name = (name or "").strip().removesuffix(".yaml")
    if not _NAME_RE.match(name):
        return None
    return resolve_inside(paths.templates / f"{name}.yaml", [paths.templates])


def list_templates(paths: AppPaths) -> list[str]:
    return sorted(p.stem for p in paths.templates.glob("*.yaml") if _template_file(paths, p.stem))


def save_template(paths: AppPaths, config: dict[str, Any], name: str) -> dict[str, Any]:
    """Write a validated config as YAML (the same file ``flux2-lora train --config`` reads)."""
    path = _template_file(paths, name)
    if path is None:
        return {
            "ok": False,
            "errors": [{"field": "", "message": "template name: 1–100 letters, digits, _ . - only"}],
        }
    v = schema_check(sync_precision(deep_merge(config or {}, {})))
    if not v["ok"]:
        return {"ok": False, "errors": v["errors"]}
    path.write_text(to_yaml(v["config"]), encoding="utf-8")
    return {"ok": True, "template_file": str(path), "errors": []}


def load_template(paths: AppPaths, name: str) -> dict[str, Any]:
    path = _template_file(paths, name)
    if path is None or not path.is_file():
        return {"ok": False, "errors": [{"field": "", "message": f"no template named {name!r}"}]}
    data, issues = read_yaml(path)
    errors, _ = issues_json(issues)
    if errors or not isinstance(data, dict):
        return {"ok": False, "errors": errors or [{"field": "", "message": "not a config mapping"}]}
    return {"ok": True, "config": sync_precision(deep_merge(default_dict(), data)), "errors": []}
