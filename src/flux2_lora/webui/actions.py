"""What the web UI does, as plain functions over JSON-able values (no Gradio, no torch).

Each function is also a Gradio API endpoint, so gradio_client and the tests drive exactly what the
buttons drive. Every config arrives as a dict and is validated here with :func:`validate_dict`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flux2_lora import runs
from flux2_lora.config import DTYPE_TO_MIXED
from flux2_lora.config.io import deep_merge, read_yaml, to_dict, to_yaml, validate_dict
from flux2_lora.config.presets import list_presets, load_preset
from flux2_lora.webui import monitor

QUICK_PRESETS = {"Fast": "fast", "High Quality": "high-quality", "Low VRAM": "low-vram"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _issues(issues: list[Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    errors = [{"field": i.path, "message": i.message} for i in issues if i.level == "error"]
    warnings = [{"field": i.path, "message": i.message} for i in issues if i.level != "error"]
    return errors, warnings


def sync_precision(config: dict[str, Any]) -> dict[str, Any]:
    """Mixed precision follows model.dtype (the schema makes a mismatch an error)."""
    dtype = (config.get("model") or {}).get("dtype", "auto")
    config.setdefault("training", {})["mixed_precision"] = DTYPE_TO_MIXED.get(dtype, "auto")
    return config


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """{ok, errors: [{path, message}], warnings, config (normalised, when valid)}."""
    parsed, issues = validate_dict(config)
    errors, warnings = _issues(issues)
    return {
        "ok": parsed is not None,
        "errors": errors,
        "warnings": warnings,
        "config": to_dict(parsed) if parsed else None,
    }


def _memory() -> Any:
    try:
        from flux2_lora import memory

        memory.estimate_report  # noqa: B018 — the module may exist before its API lands
        return memory
    except (ImportError, AttributeError):
        return None


def gpu_choices() -> list[str]:
    mem = _memory()
    return [g.name for g in getattr(mem, "GPUS", [])] if mem else []


def local_gpu() -> str | None:
    """The known GPU closest in memory to the local one (nvidia-smi: no torch in the UI process)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split()
        gib = float(out[0]) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    mem = _memory()
    known = list(getattr(mem, "GPUS", [])) if mem else []
    return min(known, key=lambda g: abs(g.gib - gib)).name if known else None


def estimate(config: dict[str, Any], gpu: str | None = None) -> dict[str, Any]:
    """Validate, then the memory estimate: {ok, errors, warnings, available, report | message}."""
    v = validate(config)
    if not v["ok"]:
        return {**v, "available": False, "message": "fix the fields marked as errors to see the estimate"}
    mem = _memory()
    if mem is None:
        return {
            **v,
            "available": False,
            "message": "estimate unavailable (the memory model is not installed)",
        }
    parsed, _ = validate_dict(config)
    try:
        report = mem.estimate_report(parsed, gpu=gpu or None)
    except Exception as e:  # the estimate must never take the form down with it
        return {**v, "available": False, "message": f"estimate unavailable: {e}"}
    v.pop("config", None)  # the form has it; keep the per-keystroke payload small
    return {**v, "available": True, "report": report}


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge {"section.key": value} into the config (a recommendation's one-click apply)."""
    out = deep_merge(config, {})
    for path, value in overrides.items():
        section, _, key = path.partition(".")
        out.setdefault(section, {})[key] = value
    if "model.dtype" in overrides:
        sync_precision(out)
    return out


def apply_preset(config: dict[str, Any], name: str) -> dict[str, Any]:
    """{ok, config (current values with the preset merged in), errors, description}."""
    name = QUICK_PRESETS.get(name, name)
    delta, problems = load_preset(name)
    if delta is None:
        known = ", ".join(p.name for p in list_presets())
        return {
            "ok": False,
            "config": config,
            "errors": [{"field": "", "message": f"unknown preset {name!r} ({known})"}],
        }
    merged = sync_precision(deep_merge(config or {}, delta))
    info = {p.name: p.description for p in list_presets()}
    return {"ok": True, "config": merged, "errors": _issues(problems)[0], "description": info.get(name, "")}


def presets() -> list[dict[str, str]]:
    return [{"name": p.name, "kind": p.kind, "description": p.description} for p in list_presets()]


def check_model(path: str, variant: str = "auto") -> dict[str, Any]:
    from flux2_lora.variants import VARIANTS, resolve_model

    try:
        r = resolve_model(path, variant)
    except ValueError as e:
        return {"ok": False, "message": str(e)}
    params = _transformer_params(r.arch)
    title = VARIANTS[r.variant].title if r.variant in VARIANTS else r.variant
    return {
        "ok": True,
        "variant": r.variant,
        "title": title,
        "source": r.source,
        "transformer_params": params,
        "message": f"{title}: transformer ≈ {_human(params)} parameters ({r.source})",
    }


def _transformer_params(arch: Any) -> int | None:
    try:
        from flux2_lora.targets import enumerate_linears

        return int(sum(s.in_features * s.out_features for s in enumerate_linears(arch)))
    except Exception:
        return None


def _human(n: int | None) -> str:
    if not n:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def upload_dataset(zip_path: str, uploads_dir: str) -> dict[str, Any]:
    """Extract an uploaded ZIP (safely) into the uploads folder: {ok, path | message}."""
    from flux2_lora.data.archive import prepare_dataset_source
    from flux2_lora.data.scan import DatasetError

    src = Path(zip_path)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", src.stem)[:60] or "dataset"
    try:
        root = prepare_dataset_source(src, Path(uploads_dir) / stem)
    except DatasetError as e:
        return {"ok": False, "message": str(e)}
    return {"ok": True, "dataset_dir": str(root)}


def check_dataset(config: dict[str, Any], uploads_dir: str | None = None) -> dict[str, Any]:
    """Scan the form's dataset: counts, problems, trigger findings and (when bucketing) the bucket table."""
    from flux2_lora.data.archive import prepare_dataset_source
    from flux2_lora.data.buckets import bucket_table, format_table
    from flux2_lora.data.captions import trigger_findings
    from flux2_lora.data.demo import ensure_demo_dataset, is_demo
    from flux2_lora.data.scan import DatasetError, scan_dataset

    ds = {**(DEFAULTS_DATASET), **((config or {}).get("dataset") or {})}
    path = str(ds.get("path") or "").strip()
    if not path:
        return {"ok": False, "message": "dataset.path is empty"}
    try:
        if is_demo(path):
            root = ensure_demo_dataset()
        else:
            work = Path(uploads_dir) if uploads_dir else Path(path).parent
            root = prepare_dataset_source(Path(path), work)
        report = scan_dataset(
            root,
            caption_extension=ds["caption_extension"],
            default_caption=ds["default_caption"],
            resolution=int(ds["resolution"]),
        )
    except (DatasetError, ValueError, TypeError) as e:
        return {"ok": False, "message": str(e)}
    out: dict[str, Any] = {
        "ok": bool(report.items),
        "root": str(root),
        "report": report.to_dict(),
        "text": report.format(),
    }
    pairs = [(str(i.path.relative_to(root)), i.caption) for i in report.items]
    out["trigger"] = [
        {"file": f, "severity": s, "message": m} for f, s, m in trigger_findings(pairs, ds["trigger_word"])
    ]
    if ds.get("bucketing"):
        table = bucket_table(
            [(i.width, i.height) for i in report.items], int(ds["resolution"]), int(ds["bucket_step"])
        )
        out["buckets"] = [{"width": w, "height": h, "images": n} for (w, h), n in sorted(table.items())]
        out["bucket_text"] = format_table(table)
    return out


def timestep_density(config: dict[str, Any]) -> list[dict[str, float]]:
    from flux2_lora.config import TrainingSection
    from flux2_lora.timesteps import density, image_tokens_for

    try:
        t = TrainingSection.model_validate({**((config or {}).get("training") or {})})
        res = int(((config or {}).get("dataset") or {}).get("resolution", 1024))
        points = density(t, image_tokens_for(res), bins=40, draws=4000)
    except Exception:  # invalid fields are reported by validate; the plot just stays empty
        return []
    return [{"sigma": round(s, 4), "density": round(d, 4)} for s, d in points]


# ---- runs -------------------------------------------------------------------------------------------


def resolve_run_dir(output_dir: str, runs_dir: str) -> Path | None:
    """output.dir placed under the runs folder; None if it would escape it (the UI serves only that)."""
    base = Path(runs_dir).resolve()
    p = Path(output_dir)
    if not p.is_absolute():
        parts = p.parts[1:] if p.parts[:1] == ("runs",) else p.parts
        p = base.joinpath(*parts) if parts else base / "default"
    p = p.resolve()
    if p == base or base not in p.parents:
        return None
    return p


def _launch_config(config: dict[str, Any], runs_dir: str) -> tuple[Any, Path | None, list[dict[str, str]]]:
    sync_precision(config)
    parsed, issues = validate_dict(config)
    errors, _ = _issues(issues)
    if parsed is None:
        return None, None, errors
    run_dir = resolve_run_dir(parsed.output.dir, runs_dir)
    if run_dir is None:
        return (
            None,
            None,
            [{"field": "output.dir", "message": f"must be a folder inside the runs folder {runs_dir}"}],
        )
    parsed.output.dir = str(run_dir)
    return parsed, run_dir, []


def start_run(config: dict[str, Any], runs_dir: str, resume: str | None = None) -> dict[str, Any]:
    """Validate, write <run>/config.yaml, launch the trainer: {ok, run_dir | errors}."""
    parsed, run_dir, errors = _launch_config(config, runs_dir)
    if parsed is None or run_dir is None:
        return {"ok": False, "errors": errors}
    if runs.is_locked(run_dir) or monitor.is_running(run_dir):
        return {
            "ok": False,
            "errors": [
                {
                    "field": "output.dir",
                    "message": f"{run_dir} has a live run; stop it or choose another output.dir",
                }
            ],
        }
    if resume and resume != "latest":
        ckpt = Path(resume).resolve()
        if run_dir not in ckpt.parents:
            return {
                "ok": False,
                "errors": [{"field": "", "message": "resume checkpoint must be in the run folder"}],
            }
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / runs.CONFIG_FILE
    cfg_file.write_text(to_yaml(parsed), encoding="utf-8")
    argv = [sys.executable, "-m", "flux2_lora.cli", "train", "--config", str(cfg_file)]
    if resume:
        argv += ["--resume", resume]
    monitor.launch(argv, run_dir, "train")
    return {"ok": True, "run_dir": str(run_dir), "errors": []}


def resume_run(run_dir: str, runs_dir: str) -> dict[str, Any]:
    """Continue a run from its latest checkpoint with the config it was started with."""
    run = _inside(run_dir, runs_dir)
    if run is None:
        return {"ok": False, "errors": [{"field": "", "message": "not a run in the runs folder"}]}
    data, issues = read_yaml(run / runs.CONFIG_FILE)
    if runs.latest_checkpoint(run) is None:
        return {"ok": False, "errors": [{"field": "", "message": f"{run} has no checkpoint to resume from"}]}
    return start_run(data or {}, runs_dir, resume="latest")


def preflight(config: dict[str, Any], runs_dir: str) -> dict[str, Any]:
    """Start the trainer's pre-flight (a few measured steps); poll with preflight_result."""
    parsed, run_dir, errors = _launch_config(config, runs_dir)
    if parsed is None or run_dir is None:
        return {"ok": False, "errors": errors}
    if runs.is_locked(run_dir) or monitor.is_running(run_dir):
        return {"ok": False, "errors": [{"field": "output.dir", "message": f"{run_dir} is busy"}]}
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / "preflight-config.yaml"
    cfg_file.write_text(to_yaml(parsed), encoding="utf-8")
    (run_dir / "preflight.json").unlink(missing_ok=True)
    argv = [sys.executable, "-m", "flux2_lora.cli", "train", "--config", str(cfg_file), "--preflight"]
    monitor.launch(argv, run_dir, "preflight")
    return {"ok": True, "run_dir": str(run_dir), "errors": []}


def preflight_result(run_dir: str, runs_dir: str) -> dict[str, Any]:
    run = _inside(run_dir, runs_dir)
    if run is None:
        return {"ok": False, "state": "none"}
    proc = monitor.process_info(run, "preflight")
    result = monitor.read_json(run / "preflight.json")
    state = "running" if proc.get("running") else ("done" if result else "failed")
    return {"ok": result is not None, "state": state, "result": result, "output": proc.get("output", "")}


def _inside(run_dir: str, runs_dir: str) -> Path | None:
    if not run_dir:
        return None
    base = Path(runs_dir).resolve()
    p = Path(run_dir)
    p = (p if p.is_absolute() else base / p).resolve()
    return p if base in p.parents else None


def run_status(run_dir: str, runs_dir: str, max_points: int = 2000) -> dict[str, Any]:
    """Everything the monitor shows: status, metrics, samples, log tail, trainer exit."""
    run = _inside(run_dir, runs_dir)
    if run is None:
        return {"ok": False, "state": "none", "message": "no run selected"}
    return {"ok": True, "run_dir": str(run), **monitor.snapshot(run, max_points)}


def stop_run(run_dir: str, runs_dir: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Graceful stop (stop file + SIGTERM); a watcher force-stops it after timeout_s."""
    run = _inside(run_dir, runs_dir)
    if run is None:
        return {"ok": False, "message": "no run selected"}
    asked = runs.request_stop(run)
    if asked:
        monitor.force_stop_later(run, timeout_s)
    return {"ok": asked, "message": "stop requested" if asked else "the run is not live"}


def list_runs(runs_dir: str) -> list[dict[str, Any]]:
    out = []
    for run in runs.iter_runs(runs_dir):
        s = runs.summarize(run).to_dict()
        st = s["status"] or {}
        out.append(
            {
                "run_dir": s["path"],
                "name": run.name,
                "state": st.get("state"),
                "step": st.get("step"),
                "total_steps": st.get("total_steps"),
                "lora": s["lora"],
                "checkpoints": len(s["checkpoints"]),
                "updated_at": st.get("updated_at"),
            }
        )
    out.sort(key=lambda r: r.get("updated_at") or 0, reverse=True)
    return out


def lora_file(run_dir: str, runs_dir: str) -> str | None:
    run = _inside(run_dir, runs_dir)
    if run is None:
        return None
    f = run / runs.LORA_FILE
    return str(f) if f.is_file() else None


def generate(
    lora: str,
    prompt: str,
    runs_dir: str,
    scale: float = 1.0,
    steps: int = 8,
    seed: int = 0,
    resolution: int = 0,
    guidance: float = 4.0,
    timeout_s: float = 600,
) -> dict[str, Any]:
    """Sample one image with a run's LoRA in a subprocess: {ok, image | message}."""
    lora_path = Path(lora).resolve() if lora else None
    base = Path(runs_dir).resolve()
    if lora_path is None or base not in lora_path.parents or not lora_path.is_file():
        return {"ok": False, "message": "choose a LoRA file from a run in the runs folder"}
    if not (prompt or "").strip():
        return {"ok": False, "message": "the prompt is empty"}
    data, _ = read_yaml(lora_path.parent / runs.CONFIG_FILE)
    model = ((data or {}).get("model") or {}).get("path", "demo")
    res = int(resolution) or int(((data or {}).get("dataset") or {}).get("resolution", 1024))
    out_dir = base / "generated"
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}.png"
    argv = [
        sys.executable,
        "-m",
        "flux2_lora.cli",
        "generate",
        "--model",
        str(model),
        "--lora",
        str(lora_path),
        "--scale",
        str(float(scale)),
        "--prompt",
        prompt,
        "--steps",
        str(int(steps)),
        "--seed",
        str(int(seed)),
        "--resolution",
        str(res),
        "--guidance",
        str(float(guidance)),
        "--out",
        str(png),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "message": f"generation took longer than {timeout_s:.0f} s"}
    if proc.returncode != 0 or not png.is_file():
        return {"ok": False, "message": (proc.stderr or proc.stdout)[-2000:] or f"exit {proc.returncode}"}
    return {"ok": True, "image": str(png)}


# ---- templates --------------------------------------------------------------------------------------


def list_templates(templates_dir: str) -> list[str]:
    d = Path(templates_dir)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def save_template(config: dict[str, Any], name: str, templates_dir: str) -> dict[str, Any]:
    """Write a validated config as YAML (the same file ``flux2-lora train --config`` reads)."""
    name = (name or "").strip().removesuffix(".yaml")
    if not _NAME_RE.match(name):
        return {
            "ok": False,
            "errors": [{"field": "", "message": "template name: letters, digits, _ . - only"}],
        }
    v = validate(sync_precision(config))
    if not v["ok"]:
        return {"ok": False, "errors": v["errors"]}
    path = Path(templates_dir) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(v["config"]), encoding="utf-8")
    return {"ok": True, "template_file": str(path), "errors": []}


def load_template(name: str, templates_dir: str) -> dict[str, Any]:
    name = (name or "").strip().removesuffix(".yaml")
    if not _NAME_RE.match(name):
        return {"ok": False, "errors": [{"field": "", "message": "no such template"}]}
    data, issues = read_yaml(Path(templates_dir) / f"{name}.yaml")
    errors, _ = _issues(issues)
    if errors or not isinstance(data, dict):
        return {"ok": False, "errors": errors or [{"field": "", "message": "not a config mapping"}]}
    return {"ok": True, "config": data, "errors": []}


DEFAULTS_DATASET: dict[str, Any] = {
    "caption_extension": ".txt",
    "default_caption": "",
    "resolution": 1024,
    "bucketing": False,
    "bucket_step": 64,
    "trigger_word": "",
}


def default_dict_copy() -> dict[str, Any]:
    from flux2_lora.webui.schema import default_dict

    return default_dict()
