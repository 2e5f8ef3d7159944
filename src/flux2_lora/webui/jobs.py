"""Runs started from the UI: launch, resume, pre-flight, stop, status, and Test LoRA generation.

Every process is a ``python -m flux2_lora.cli`` subprocess with an argument list (no shell); every path
a request names goes through :class:`~flux2_lora.webui.paths.AppPaths` first.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from flux2_lora import runs
from flux2_lora.config import GenerationSettings, TrainConfig
from flux2_lora.config.io import read_yaml, to_yaml, validate_dict, validate_section
from flux2_lora.process_tree import trainer_command
from flux2_lora.webui import monitor
from flux2_lora.webui.configs import check_model, issues_json, sync_precision
from flux2_lora.webui.paths import AppPaths, PathRefused, is_builtin_dataset, resolve_inside

PREFLIGHT_CONFIG = "preflight-config.yaml"


def _err(field: str, message: str) -> dict[str, Any]:
    return {"ok": False, "errors": [{"field": field, "message": message}]}


def launch_config(
    paths: AppPaths, config: dict[str, Any]
) -> tuple[TrainConfig | None, Path | None, list[dict[str, str]]]:
    """The config a trainer would get: validated, every path field checked and written resolved (what was
    checked is what runs), a dataset ZIP unpacked in the uploads folder (never into the run's folder), the
    model known. (config, run dir, []) or (None, None, errors)."""
    from flux2_lora.data.scan import DatasetError
    from flux2_lora.webui.datasets import unpacked_data
    from flux2_lora.webui.paths import path_fields, unpacked_paths
    from flux2_lora.webui.requests import prompt_errors

    if not isinstance(config, dict):
        return None, None, [{"field": "config", "message": "must be a mapping of config sections"}]
    parsed, issues = validate_dict(sync_precision(dict(config)))
    errors, _ = issues_json(issues)
    if parsed is None:
        return None, None, errors
    bad_text = prompt_errors(parsed.model_dump())
    if bad_text:
        return None, None, bad_text
    model = check_model(paths, parsed.model.path, parsed.model.variant)
    if not model["ok"]:
        return None, None, [{"field": "model.path", "message": model["message"]}]
    try:
        checked = paths.checked_paths(parsed.model_dump())
        for dotted, role in path_fields().items():
            section, _, key = dotted.partition(".")
            value = checked.get(section, {}).get(key)
            if role == "data" and value is not None:
                value = unpacked_data(paths, dotted, value)
            if value is not None:
                setattr(getattr(parsed, section), key, value)
    except PathRefused as e:
        return None, None, [{"field": e.field, "message": e.message}]
    except DatasetError as e:
        field, _, message = str(e).partition(": ")
        return None, None, [{"field": field, "message": message}]
    run_dir = Path(parsed.output.dir)
    dumped = parsed.model_dump()
    for dotted in path_fields():
        section, _, key = dotted.partition(".")
        for _, value in unpacked_paths(dotted, dumped[section][key]):  # every dataset folder it names
            inside = value.strip() and not is_builtin_dataset(value)
            if inside and resolve_inside(run_dir, [Path(value)]) is not None:
                message = "is inside the dataset folder: the run would train on its own samples"
                return None, None, [{"field": "output.dir", "message": message}]
    return parsed, run_dir, []


def _busy(run_dir: Path) -> bool:
    return runs.is_locked(run_dir) or monitor.is_running(run_dir)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flux2_lora.cli", *args]


def judged(
    paths: AppPaths, config: dict[str, Any], start_anyway: bool, gpu: str | None
) -> tuple[TrainConfig | None, Path | None, dict[str, Any]]:
    """The config as it would run and its run folder, or the refusal that Start and Add to queue both give:
    the assessment's errors always, its blockers (a red verdict for ``gpu``, host RAM that does not fit)
    unless ``start_anyway``."""
    from flux2_lora.assess import assess, dataset_facts

    parsed, run_dir, errors = launch_config(paths, config)
    if parsed is None or run_dir is None:
        return None, None, {"ok": False, "errors": errors}
    # The config as it will run (paths resolved, a ZIP unpacked), so the facts are about what runs.
    a = assess(parsed, gpu=gpu, dataset=dataset_facts(parsed), recommendations=False)
    if a.errors:
        return (
            None,
            None,
            {"ok": False, "errors": [e.to_dict() for e in a.errors], "start_reason": a.start_reason},
        )
    if a.blockers and not start_anyway:
        why = f'{a.start_reason} (tick "Start anyway" to start regardless: the GPU class is a guess)'
        return None, None, {**_err("", why), "blockers": a.blockers, "start_reason": a.start_reason}
    return parsed, run_dir, {}


def start_run(
    paths: AppPaths,
    config: dict[str, Any],
    resume: str | None = None,
    start_anyway: bool = False,
    gpu: str | None = None,
) -> dict[str, Any]:
    """Validate, assess, write <run>/config.yaml, launch the trainer: {ok, run_dir | errors}.

    The assessment's errors refuse the run with its own words; its blockers (a red verdict for ``gpu``,
    host RAM that does not fit) unless ``start_anyway``."""
    parsed, run_dir, refused = judged(paths, config, start_anyway, gpu)
    if parsed is None or run_dir is None:
        return refused
    if _busy(run_dir):
        return _err("output.dir", f"{run_dir} has a live run: stop it, or choose another output folder")
    if resume is not None and not isinstance(resume, str):
        return _err("resume", "must be 'latest' or a checkpoint path (text)")
    if resume:
        try:
            resume = paths.checkpoint(run_dir, resume)
        except PathRefused as e:
            return _err(e.field, e.message)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A stop file left by an earlier run would stop this one at its first step.
    runs.clear_stop_request(run_dir)
    cfg_file = run_dir / runs.CONFIG_FILE
    cfg_file.write_text(to_yaml(parsed), encoding="utf-8")
    monitor.launch(trainer_command(cfg_file, resume=resume or None), run_dir, "train")
    return {"ok": True, "run_dir": str(run_dir), "errors": []}


def resume_run(paths: AppPaths, run_dir: str) -> dict[str, Any]:
    """Continue a run from its latest checkpoint with the config it was started with."""
    run = paths.existing_run(run_dir)
    if run is None or not (run / runs.CONFIG_FILE).is_file():
        return _err("", "choose a run of the runs folder to resume")
    status = runs.read_status(run)
    if status is not None and status.state == runs.RunState.FINISHED:
        # Said here, at once: a trainer started for it would load for a minute to train nothing.
        return _err(
            "", f"{run.name} is finished ({status.step}/{status.total_steps} steps): nothing to resume"
        )
    if runs.latest_checkpoint(run) is None:
        return _err("", f"{run.name} has no checkpoint to resume from yet")
    data, issues = read_yaml(run / runs.CONFIG_FILE)
    if not isinstance(data, dict):
        return {
            "ok": False,
            "errors": issues_json(issues)[0] or [{"field": "", "message": "unreadable config"}],
        }
    # The run's own folder, whatever its config says: resuming never writes anywhere else.
    data.setdefault("output", {})["dir"] = str(run)
    # Its first start was judged (and maybe started anyway); its errors are still refused.
    return start_run(paths, data, resume="latest", start_anyway=True)


def preflight(paths: AppPaths, config: dict[str, Any]) -> dict[str, Any]:
    """Start the trainer's pre-flight (a few measured steps); the monitor shows its progress and result."""
    parsed, run_dir, errors = launch_config(paths, config)
    if parsed is None or run_dir is None:
        return {"ok": False, "errors": errors}
    if _busy(run_dir):
        return _err("output.dir", f"{run_dir} is busy: a trainer or pre-flight runs there")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / PREFLIGHT_CONFIG
    cfg_file.write_text(to_yaml(parsed), encoding="utf-8")
    (run_dir / "preflight.json").unlink(missing_ok=True)
    monitor.launch(trainer_command(cfg_file, extra=["--preflight"]), run_dir, "preflight")
    return {"ok": True, "run_dir": str(run_dir), "errors": []}


def preflight_result(paths: AppPaths, run_dir: str) -> dict[str, Any]:
    run = paths.existing_run(run_dir)
    if run is None:
        return {"ok": False, "state": "none"}
    info = monitor.process_info(run, "preflight")
    result = monitor.read_json(run / "preflight.json")
    if info.get("running"):
        state = "running"
    elif info.get("stop_requested"):
        state = "stopped"
    else:
        state = "done" if result else ("failed" if info else "none")
    return {"ok": result is not None, "state": state, "result": result, "output": info.get("output", "")}


def run_status(paths: AppPaths, run_dir: str, max_points: int = 2000) -> dict[str, Any]:
    """Everything the monitor shows: status, metrics, samples, log tail, pre-flight."""
    run = paths.existing_run(run_dir)
    if run is None:
        return {"ok": False, "state": "none", "message": "no run selected"}
    from flux2_lora.webui.edit_view import with_pairs

    snap = monitor.snapshot(run, paths.served_file, max_points)
    if snap.get("samples"):  # an edit run's samples come with their reference | sample picture
        snap["samples"] = with_pairs(paths, run, snap["samples"])
    return {"ok": True, "run_dir": str(run), **snap}


def stop_run(paths: AppPaths, run_dir: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Graceful stop (also while the trainer is still starting); force-stopped after timeout_s."""
    from flux2_lora.webui.ops import cancel_running_job

    run = paths.existing_run(run_dir)
    if run is None:
        return {"ok": False, "message": "no run selected"}
    cancel_running_job(paths, run)  # a queue job stopped here ends cancelled (and its queue goes on)
    return monitor.stop(run, max(1.0, min(float(timeout_s), 3600.0)))


def list_runs(paths: AppPaths) -> list[dict[str, Any]]:
    out = []
    for run in runs.iter_runs(paths.runs):
        if paths.existing_run(str(run)) is None:
            continue  # uploads, templates, generated
        s = runs.summarize(run).to_dict()
        st = s["status"] or {}
        out.append(
            {
                "run_dir": s["path"],
                "name": runs.run_name(run, paths.runs),
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


def compare_runs(paths: AppPaths, run_dirs: list[str]) -> dict[str, Any]:
    import hashlib
    import os

    from flux2_lora.experiments.compare import CompareError, jsonable, write_outputs

    chosen = [paths.existing_run(r) for r in run_dirs or []]
    if any(r is None for r in chosen):
        bad = next(r for r, p in zip(run_dirs, chosen) if p is None)
        return {"ok": False, "message": f"{bad}: not a run of this UI's runs folder"}
    # fsencode: a folder name that is not UTF-8 (a lone surrogate in Python) hashes as its bytes.
    key = hashlib.sha1(b"\n".join(os.fsencode(str(r)) for r in chosen)).hexdigest()[:12]
    paths.generated.mkdir(parents=True, exist_ok=True)
    grid, curves = paths.generated / f"compare-{key}-grid.png", paths.generated / f"compare-{key}-curves.png"
    try:
        result = write_outputs([r for r in chosen if r is not None], grid_file=grid, curves_file=curves)
    except CompareError as e:
        return {"ok": False, "message": str(e)}
    return jsonable({"ok": True, **result, "grid_file": str(grid), "curves_file": str(curves)})


def lora_file(paths: AppPaths, run_dir: str) -> str | None:
    run = paths.existing_run(run_dir)
    f = paths.served_file(str(run / runs.LORA_FILE)) if run else None
    return str(f) if f else None


def _lora(paths: AppPaths, lora: str) -> Path | None:
    f = paths.served_file(lora) if lora else None
    return f if f is not None and f.suffix == ".safetensors" and paths.existing_run(str(f.parent)) else None


def run_defaults(paths: AppPaths, lora: str) -> dict[str, Any]:
    """The sampling settings a run used (for Test LoRA): GenerationSettings' prompt, steps, guidance and
    resolution, the run's model, and whether the run's config could be read (ok)."""
    f = _lora(paths, lora)
    data, _ = read_yaml(f.parent / runs.CONFIG_FILE) if f else (None, [])
    parsed, _ = validate_dict(data if isinstance(data, dict) else {})
    c = parsed or TrainConfig()
    own = GenerationSettings.for_run(c).model_dump(include={"prompt", "steps", "guidance", "resolution"})
    edit = _run_references(f.parent, c) if f else []
    if f and not own["prompt"]:  # an edit run's default prompt: its first pair's instruction, as sampled
        first = next(iter(runs.read_jsonl(f.parent / runs.SAMPLES_INDEX)), {})
        own["prompt"] = str(first.get("prompt") or "") if isinstance(first, dict) else ""
    return {
        "ok": f is not None and parsed is not None,
        **own,
        "model": c.model.path,
        # Edit LoRAs: the images the run's first validation sample edited, and the size cap they train at.
        "references": edit,
        "reference_max_pixels": c.dataset.reference_max_pixels,
    }


def _run_references(run: Path, config: TrainConfig) -> list[str]:
    """The reference images of a run's first validation prompt: validation.references, else what the
    trainer recorded beside its samples ([] for a text-to-image run)."""
    if config.validation.references:
        return [str(p) for p in config.validation.references[0]]
    first = next(iter(runs.read_jsonl(run / runs.SAMPLES_INDEX)), {})
    refs = first.get("references") if isinstance(first, dict) else None
    return [str(r) for r in refs] if isinstance(refs, list) else []


def _or_own(value: Any, own: Any, lowest: float) -> Any:
    """``value``, or the run's own where it is missing or below ``lowest`` (how the API asks for it)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value < lowest):
        return own
    return value


def generate(
    paths: AppPaths,
    lora: str,
    prompt: str,
    scale: float = 1.0,
    steps: int = 0,
    seed: int = 0,
    resolution: int = 0,
    guidance: float = -1.0,
    references: list[str] | None = None,
    timeout_s: float = 600,
) -> dict[str, Any]:
    """One image with a run's LoRA, in a subprocess: {ok, image | message}. steps 0, resolution 0 and a
    negative guidance (or none given) take the run's own sampling settings; the rest are checked as
    GenerationSettings. ``references``: the images an edit LoRA edits (inside the allowed folders), sized
    as the run trained them."""
    f = _lora(paths, lora)
    if f is None:
        return {"ok": False, "message": "choose a LoRA of a run in the runs folder"}
    if not (prompt or "").strip():
        return {"ok": False, "message": "the prompt is empty"}
    d = run_defaults(paths, str(f))
    try:
        model = paths.model_source(str(d["model"]))
    except PathRefused as e:
        return {"ok": False, "message": f"the run's model: {e.message}"}
    given = {
        "prompt": prompt,
        "scale": scale,
        "steps": _or_own(steps, d["steps"], lowest=1),
        "guidance": _or_own(guidance, d["guidance"], lowest=0),
        "resolution": _or_own(resolution, d["resolution"], lowest=1),
        "seed": seed or 0,
    }
    settings, issues = validate_section(GenerationSettings, given)
    if settings is None:
        return {"ok": False, "message": "; ".join(str(i) for i in issues)}
    from flux2_lora.webui.edit_view import readable_image

    refs = []
    for i, r in enumerate(references or []):
        real = readable_image(paths, r) if r.strip() else None
        if real is None:
            return {
                "ok": False,
                "field": f"references[{i}]",
                "message": f"references[{i}]: {r} is not an image file in the folders this UI may read",
            }
        refs.append(real)
    png = paths.generated / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.png"
    # Values ride in --opt=VALUE form: a prompt starting with '-' is text, never another option.
    argv = _cli(
        "generate",
        f"--model={model}",
        f"--lora={f}",
        *(f"--{name}={value}" for name, value in settings.model_dump().items()),
        *(f"--reference={r}" for r in refs),
        *([f"--reference-max-pixels={d['reference_max_pixels']}"] if refs else []),
        f"--out={png}",
    )
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "message": f"generation took longer than {timeout_s:.0f} s"}
    if proc.returncode != 0 or not png.is_file():
        err = (proc.stderr or proc.stdout or "").strip().splitlines()
        return {
            "ok": False,
            "message": (err[-1] if err else f"generation failed (exit {proc.returncode})")[-2000:],
        }
    return {
        "ok": True,
        "image": str(png),
        "steps": settings.steps,
        "resolution": settings.resolution,
        "guidance": settings.guidance,
        "references": [str(r) for r in refs],
    }
