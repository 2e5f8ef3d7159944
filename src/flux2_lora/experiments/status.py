"""What a sweep holds: its trials (state, parameters, objective, reason, run directory) and the best one,
whose config is written as ``DIR/best.yaml`` (no torch; reads the study and the trials' run dirs)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux2_lora import runs
from flux2_lora.config.io import to_yaml, validate_dict
from flux2_lora.experiments.spec import SpecError, load_spec
from flux2_lora.experiments.store import (
    BEST_FILE,
    OWNER_FILE,
    SPEC_FILE,
    STUDY_FILE,
    SweepError,
    counts_toward_budget,
    open_storage,
    storage_url,
    trial_config_dict,
)
from flux2_lora.runs import is_held

if TYPE_CHECKING:
    import optuna

STATE_NAMES = {
    "COMPLETE": "finished",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "queued",
}


def study_name(sweep_dir: Path) -> str:
    """The spec's name (from the copy in DIR), else the folder's name: what the sweep command used."""
    try:
        spec = load_spec(sweep_dir / SPEC_FILE)
    except SpecError:
        return sweep_dir.name
    return spec.name or sweep_dir.name


def load_study(sweep_dir: Path, storage: str | None = None) -> optuna.Study:
    """The sweep's study; SweepError naming DIR (or --storage) when there is none."""
    import optuna

    sweep_dir = sweep_dir.resolve()
    if storage is None and not (sweep_dir / STUDY_FILE).is_file():
        raise SweepError(
            f"{sweep_dir}: no sweep here (no {STUDY_FILE}); start one with `flux2-lora sweep SPEC.yaml --dir DIR`"
        )
    st = open_storage(storage_url(sweep_dir, storage))
    name = study_name(sweep_dir)
    try:
        return optuna.load_study(study_name=name, storage=st)
    except KeyError:
        raise SweepError(f"no study named {name!r} in {storage or sweep_dir / STUDY_FILE}") from None


def _value(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    state = STATE_NAMES.get(t.state.name, t.state.name.lower())
    run_dir = attrs.get("run_dir") if isinstance(attrs.get("run_dir"), str) else None
    row: dict[str, Any] = {
        "number": t.number,
        "state": state,
        "params": dict(t.params),
        "value": _value(t.value) if t.state.name == "COMPLETE" else None,
        "objective": attrs.get("objective"),
        "reason": attrs.get("reason") or None,
        "run_dir": run_dir,
        "retry_of": attrs.get("retry_of"),
        "retried_as": None,
        "worker": attrs.get("worker"),
        "host": attrs.get("host"),
        "memory_gib": (attrs.get("memory") or {}).get("need_gib")
        if isinstance(attrs.get("memory"), dict)
        else None,
        "seconds": attrs.get("seconds"),
        "step": None,
        "total_steps": None,
    }
    if run_dir:
        status = runs.read_status(run_dir)
        if status is not None:
            row["step"], row["total_steps"] = status.step, status.total_steps
        # A running trial whose worker on this machine is gone: the next run of the sweep fails it.
        if (
            state == "running"
            and attrs.get("host") == socket.gethostname()
            and not is_held(Path(run_dir) / OWNER_FILE)
        ):
            row["state"] = "interrupted"
            row["reason"] = (
                "its sweep worker ended while it ran; the next run of the sweep marks it failed and runs it again"
            )
    return row


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if _value(t.value) is not None
    ]
    return min(done, key=lambda t: (float(t.value or 0), t.number)) if done else None


def write_best(sweep_dir: Path, study: optuna.Study) -> dict[str, Any] | None:
    """The best trial's config as DIR/best.yaml (its own output.dir → DIR/best), with a header saying
    which trial and objective it came from; None when no trial has finished."""
    best = best_trial(study)
    if best is None:
        return None
    run_dir = best.user_attrs.get("run_dir")
    data = trial_config_dict(Path(run_dir)) if isinstance(run_dir, str) else None
    if data is None:
        return None
    data["output"]["dir"] = str(sweep_dir.resolve() / "best")
    config, _ = validate_dict(data)
    if config is None:
        return None
    kind = str(best.user_attrs.get("objective") or "objective")
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    header = (
        f"# best trial {best.number} of sweep {study.study_name!r}: {kind} {best.value:.6g}\n"
        f"# parameters: {params}\n# its run: {run_dir}\n"
    )
    path = sweep_dir / BEST_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(header + to_yaml(config), encoding="utf-8")
    os.replace(tmp, path)
    return {
        "number": best.number,
        "value": float(best.value or 0),
        "objective": kind,
        "params": dict(best.params),
        "file": str(path),
        "run_dir": run_dir,
    }


def sweep_status(sweep_dir: str | Path, storage: str | None = None, write: bool = True) -> dict[str, Any]:
    """Every trial and the best (JSON-able); DIR/best.yaml is written when ``write``."""
    d = Path(sweep_dir).resolve()
    study = load_study(d, storage)
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(t) for t in trials]
    retried = {t.user_attrs.get("retry_of"): t for t in trials if t.user_attrs.get("retry_of") is not None}
    for r in rows:
        again = retried.get(r["number"])
        if again is not None:
            r["retried_as"] = again.number
            if not r["reason"]:
                r["reason"] = again.user_attrs.get("retry_reason")
    best = write_best(d, study) if write else None
    if best is None:
        b = best_trial(study)
        best = (
            {
                "number": b.number,
                "value": float(b.value or 0),
                "objective": b.user_attrs.get("objective"),
                "params": dict(b.params),
                "file": None,
                "run_dir": b.user_attrs.get("run_dir"),
            }
            if b
            else None
        )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    attrs = study.user_attrs
    return {
        "dir": str(d),
        "study": study.study_name,
        "objective": attrs.get("objective"),
        "parameters": attrs.get("parameters") or [],
        "budget": attrs.get("trials"),
        "counted": sum(counts_toward_budget(t) for t in trials),
        "counts": counts,
        "trials": rows,
        "best": best,
    }


def format_status(s: dict[str, Any]) -> str:
    """The status as a table for the console."""
    lines = [
        f"sweep {s['study']!r} in {s['dir']}: {s['counted']}/{s['budget']} trials "
        f"({', '.join(f'{n} {k}' for k, n in sorted(s['counts'].items()))}); objective {s['objective']}"
    ]
    lines.append(f"{'#':>4} {'STATE':11} {'OBJECTIVE':>12}  PARAMETERS / REASON")
    for r in s["trials"]:
        value = f"{r['value']:.6g}" if r["value"] is not None else "-"
        params = ", ".join(f"{k}={_short(v)}" for k, v in r["params"].items())
        lines.append(f"{r['number']:>4} {r['state']:11} {value:>12}  {params}")
        detail = []
        if r["objective"] and r["value"] is not None:
            detail.append(str(r["objective"]))
        if r["reason"]:
            detail.append(str(r["reason"]))
        if r["run_dir"]:
            detail.append(str(r["run_dir"]))
        for d in detail:
            lines.append(f"{'':29}{d}")
    b = s["best"]
    if b:
        lines.append(
            f"best: trial {b['number']}, {b['objective']} {b['value']:.6g} ({', '.join(f'{k}={_short(v)}' for k, v in b['params'].items())})"
        )
        if b.get("file"):
            lines.append(f"best config: {b['file']}")
    else:
        lines.append("best: none yet (no trial has finished)")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
