"""Sweeps and auto-tune from the UI (no Gradio, no torch): plan a sweep from a spec, launch it as a
``flux2-lora sweep`` subprocess in a folder of the runs folder, read its trials; propose a config from
the form's dataset.

A sweep spec from a request is hostile like any config: its base names presets and a saved template (never
a file path), its ``set`` values and every trial config are validated by the one schema, and the dataset
and model paths it names go through :class:`~flux2_lora.webui.paths.AppPaths` like a run's.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from flux2_lora import runs
from flux2_lora.config.io import to_dict
from flux2_lora.webui import configs, monitor
from flux2_lora.webui.paths import AppPaths, PathRefused

KIND = "sweep"  # the monitor's job kind for a sweep process


def optuna_missing() -> str | None:
    """Why sweeps cannot run here, or None."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        return "sweeps need Optuna: pip install 'flux2-lora[experiments]'"
    return None


def fields() -> list[dict[str, Any]]:
    from flux2_lora.experiments.spec import sweepable_fields

    return sweepable_fields()


def _err(field: str, message: str) -> dict[str, Any]:
    return {"ok": False, "errors": [{"field": field, "message": message}]}


def _spec_dict(
    paths: AppPaths, spec: dict[str, Any], *, unpack: bool = False
) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """The request's spec as a CLI spec: base.template → the template's file, and every path field it
    names (in base.set, in the presets or template it composes, in a parameter's values) checked by the
    one path check and written resolved. ``unpack``: a dataset ZIP is unpacked in the uploads folder and
    its folder given instead, so no trial unpacks anything into its run folder."""
    from flux2_lora.config.io import compose
    from flux2_lora.data.scan import DatasetError
    from flux2_lora.experiments.spec import flat_set
    from flux2_lora.webui.datasets import unpacked_data
    from flux2_lora.webui.paths import path_fields
    from flux2_lora.webui.requests import PROMPT_FIELDS, prompt_errors, text_problem

    if not isinstance(spec, dict):
        return None, [{"field": "", "message": "the spec must be a mapping"}]
    out = copy.deepcopy(spec)
    base = out.get("base")
    if base is None:
        base = out["base"] = {}
    if not isinstance(base, dict):
        return None, [{"field": "base", "message": "must be a mapping (presets, template, set)"}]
    if "config" in base:
        return None, [{"field": "base.config", "message": "the UI takes a saved template (base.template)"}]
    template = base.pop("template", None)
    config_file = None
    if template:
        config_file = configs._template_file(paths, str(template))
        if config_file is None or not config_file.is_file():
            return None, [{"field": "base.template", "message": f"no template named {template!r}"}]
        base["config"] = str(config_file)
    values = base.get("set")
    flat = dict(flat_set(values)) if isinstance(values, dict) else {}
    if isinstance(values, dict):
        base["set"] = flat
    fields = path_fields()
    for dotted in flat:
        if fields.get(dotted) == "output":
            return None, [
                {"field": f"base.set.{dotted}", "message": "is chosen by the sweep (one folder per trial)"}
            ]
    presets = base.get("presets")
    names = [str(n) for n in presets] if isinstance(presets, list) else []
    composed, _ = compose(names, config_file, ())
    for dotted, value in flat.items():
        section, _, key = dotted.partition(".")
        if isinstance(composed.get(section), dict):
            composed[section][key] = value
        else:
            composed[section] = {key: value}
    origin = "base.template" if template else "base.presets"
    bad_text = prompt_errors(composed)
    params = out.get("parameters")
    for name, param in params.items() if isinstance(params, dict) else ():
        if str(name) in PROMPT_FIELDS and isinstance(param, dict) and isinstance(param.get("values"), list):
            for i, v in enumerate(param["values"]):
                problem = text_problem(v, prompt=True) if isinstance(v, str) else None
                if problem:
                    bad_text.append({"field": f"parameters.{name}.values[{i}]", "message": problem})
    if bad_text:
        return None, bad_text

    def check(field: str, value: Any) -> Any:
        checked = paths.checked_value(field, value)
        return unpacked_data(paths, field, checked) if unpack else checked

    try:
        for dotted, role in fields.items():
            section, _, key = dotted.partition(".")
            sec = composed.get(section)
            if role == "output" or not isinstance(sec, dict) or key not in sec:
                continue
            where = f"base.set.{dotted}" if dotted in flat else origin
            try:
                resolved = check(dotted, sec[key])
            except PathRefused as e:  # an item of a list field: its own name leads the message
                message = e.message if dotted in flat and e.field == dotted else f"{e.field}: {e.message}"
                return None, [{"field": where, "message": message}]
            if isinstance(base.get("set"), dict) or "set" not in base:
                base.setdefault("set", {})[dotted] = resolved
        for name, param in params.items() if isinstance(params, dict) else ():
            field_role = fields.get(str(name))
            choices = param.get("values") if isinstance(param, dict) else None
            if field_role in (None, "output") or not isinstance(choices, list):
                continue  # an output field, or a range on a text field: the plan says why
            for i, v in enumerate(choices):
                try:
                    choices[i] = check(str(name), v)
                except PathRefused as e:
                    return None, [{"field": f"parameters.{name}.values[{i}]", "message": e.message}]
    except DatasetError as e:
        field, _, message = str(e).partition(": ")
        return None, [{"field": field, "message": message}]
    return out, []


def _plan(
    paths: AppPaths, spec: dict[str, Any], *, unpack: bool = False
) -> tuple[Any, dict[str, Any] | None, list[dict[str, str]]]:
    from flux2_lora.experiments.spec import SpecError, build_plan, parse_spec

    data, errors = _spec_dict(paths, spec, unpack=unpack)
    if data is None:
        return None, None, errors
    try:
        return build_plan(parse_spec(copy.deepcopy(data))), data, []
    except SpecError as e:
        return None, None, [{"field": i.path, "message": i.message} for i in e.issues]


def plan(paths: AppPaths, spec: dict[str, Any], gpu: str = "") -> dict[str, Any]:
    """{ok, errors, trials, grid_size, largest: {params, gib, verdict, reason, target}}: what Launch would
    run and its largest trial's memory on the GPU (the local one, else this machine's RAM)."""
    from flux2_lora.experiments.vet import Target, largest_trial

    p, _, errors = _plan(paths, spec)
    if p is None:
        return {"ok": False, "errors": errors, "trials": 0, "grid_size": None, "largest": None}
    try:
        target = Target.choose(gpu or None)
    except ValueError as e:
        return {"ok": False, "errors": [{"field": "gpu", "message": str(e)}], "trials": 0, "largest": None}
    return {
        "ok": True,
        "errors": [],
        "trials": p.trial_budget(),
        "grid_size": p.grid_size,
        "method": p.spec.method,
        "largest": largest_trial(p, target),
        "cannot_start": optuna_missing(),
    }


def sweep_dir(paths: AppPaths, name: str) -> Path:
    """The sweep's folder: a folder of the runs folder (PathRefused otherwise)."""
    if not (name or "").strip():
        raise PathRefused("name", "give the sweep a name (its folder in the runs folder)")
    return paths.run_dir(name, "name")


def start(paths: AppPaths, spec: dict[str, Any], name: str, gpu: str = "") -> dict[str, Any]:
    """Write DIR/sweep.yaml and launch ``flux2-lora sweep`` on it: {ok, sweep_dir | errors}. A sweep of
    that name continues (when its spec is the same)."""
    import yaml

    missing = optuna_missing()
    if missing:
        return _err("", missing)
    p, data, errors = _plan(paths, spec, unpack=True)
    if p is None or data is None:
        return {"ok": False, "errors": errors}
    try:
        d = sweep_dir(paths, name)
    except PathRefused as e:
        return _err(e.field, e.message)
    if monitor.is_running(d, KIND):
        return _err("name", f"the sweep {d.name} is running; stop it first, or give another name")
    conflict = _other_study(d, p)
    if conflict:
        return _err("name", conflict)
    data["name"] = d.name
    d.mkdir(parents=True, exist_ok=True)
    from flux2_lora.experiments.store import SPEC_FILE

    runs.clear_stop_request(d)
    spec_file = d / SPEC_FILE
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    argv = [sys.executable, "-m", "flux2_lora.cli", "sweep", str(spec_file), "--dir", str(d)]
    if gpu:
        argv.append(f"--gpu={gpu}")
    monitor.launch(argv, d, KIND)
    return {"ok": True, "sweep_dir": str(d), "name": d.name, "trials": p.trial_budget(), "errors": []}


def _other_study(d: Path, p: Any) -> str | None:
    """Why the folder's study is not this spec's, or None (no study yet, or the same one)."""
    from flux2_lora.experiments.status import load_study
    from flux2_lora.experiments.store import STUDY_FILE, SweepError

    if not (d / STUDY_FILE).is_file():
        return None
    try:
        study = load_study(d)
    except SweepError:
        return None
    if study.user_attrs.get("fingerprint") not in (None, p.fingerprint()):
        return f"{d.name} holds a sweep of another spec; give this one another name"
    return None


def status(paths: AppPaths, name: str) -> dict[str, Any]:
    """The sweep's trials and best (as ``flux2-lora sweep status --json``) and its process."""
    from flux2_lora.experiments.status import sweep_status
    from flux2_lora.experiments.store import SweepError

    if optuna_missing():
        return {"ok": False, "message": optuna_missing(), "trials": [], "best": None}
    try:
        d = sweep_dir(paths, name)
    except PathRefused as e:
        return {"ok": False, "message": e.message, "trials": [], "best": None}
    info = monitor.process_info(d, KIND)
    out: dict[str, Any] = {
        "running": bool(info.get("running")),
        "output": info.get("output", ""),
        "returncode": info.get("returncode"),
    }
    try:
        report = sweep_status(d, write=not info.get("running"))
    except SweepError as e:
        return {"ok": False, "message": str(e), "trials": [], "best": None, **out}
    return {"ok": True, "message": "", **report, **out}


def stop(paths: AppPaths, name: str) -> dict[str, Any]:
    """Ask the sweep to stop: its running trials save a checkpoint and are queued again for a re-run."""
    try:
        d = sweep_dir(paths, name)
    except PathRefused as e:
        return {"ok": False, "message": e.message}
    if not monitor.is_running(d, KIND):
        return {"ok": False, "message": "this sweep is not running from the UI"}
    runs.write_stop_request(d)
    return {
        "ok": True,
        "message": "stop requested: the running trials save a checkpoint, then the sweep ends",
    }


def list_sweeps(paths: AppPaths) -> list[str]:
    """Names of the sweep folders in the runs folder (those with a study or a spec)."""
    from flux2_lora.experiments.store import SPEC_FILE, STUDY_FILE

    out = []
    for child in sorted(paths.runs.iterdir()):
        is_sweep = child.is_dir() and ((child / STUDY_FILE).is_file() or (child / SPEC_FILE).is_file())
        if is_sweep and paths.existing_run(str(child)) is not None:
            out.append(child.name)
    return out


def autotune(paths: AppPaths, config: dict[str, Any], gpu: str = "") -> dict[str, Any]:
    """The form's dataset read and a config proposed, each value with its reason, fitted to the GPU:
    {ok, config, choices, fit, kind, dataset} or {ok: False, field, message}."""
    from flux2_lora.data.scan import DatasetError
    from flux2_lora.experiments.autotune import propose
    from flux2_lora.webui.datasets import dataset_root

    ds = (config or {}).get("dataset") or {}
    path = str(ds.get("path") or "")
    try:
        root = dataset_root(paths, path)
        p = propose(
            root,
            dataset_path=path,
            base=config,
            gpu=gpu or None,
            caption_extension=str(ds.get("caption_extension") or ".txt"),
            trigger_word=str(ds.get("trigger_word") or ""),
        )
    except PathRefused as e:
        return {"ok": False, "field": e.field, "message": e.message}
    except (DatasetError, ValueError, OSError) as e:
        return {"ok": False, "field": "dataset.path", "message": str(e).removeprefix("dataset.path: ")}
    result = p.to_dict()
    return {
        "ok": True,
        "config": to_dict(p.config),
        **{k: result[k] for k in ("choices", "fit", "kind", "dataset")},
    }
