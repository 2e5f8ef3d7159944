"""``flux2-lora sweep SPEC.yaml --dir DIR`` runs (or continues) a sweep; ``flux2-lora sweep status DIR``
lists its trials and the best, and writes the best config as DIR/best.yaml."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from flux2_lora.cli.common import fail, show

EXTRA_HINT = "sweeps need Optuna: pip install 'flux2-lora[experiments]'"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="hyperparameter sweep on Optuna (grid / random / TPE); `sweep status DIR` lists trials",
        description="Run a hyperparameter sweep from a spec (base config, parameters by config path, method, "
        "trials, objective). Every trial is a run directory DIR/trial-NNNN. Running the command again "
        "continues the study. `flux2-lora sweep status DIR [--json]` lists the trials and the best, and "
        "writes the best config as DIR/best.yaml.",
    )
    p.add_argument(
        "target", nargs="+", metavar="SPEC.yaml | status DIR", help="the sweep spec, or: status DIR"
    )
    p.add_argument(
        "--dir", dest="sweep_dir", metavar="DIR", help="the sweep's folder (study.db and trial-NNNN/)"
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna storage URL (e.g. postgresql://user@host/db) so workers on several machines share one "
        "study; default: sqlite in DIR/study.db",
    )
    p.add_argument(
        "--gpus", metavar="0,1,…", help="run one trial per GPU in parallel (CUDA_VISIBLE_DEVICES per trial)"
    )
    p.add_argument(
        "--gpu", help="GPU class to vet trials against (24, 48, 'H100', or GiB); default: the local GPU"
    )
    p.add_argument("--trials", type=int, metavar="N", help="trial budget (overrides the spec's trials)")
    p.add_argument(
        "--prune",
        action="store_true",
        help="stop trials whose eval loss is worse than the median of earlier trials at the same step",
    )
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = list(args.target)
    if target[0] == "status":
        if len(target) != 2:
            return fail("usage: flux2-lora sweep status DIR [--json] [--storage URL]", 2)
        return _status(Path(target[1]), args.storage, args.json)
    if len(target) != 1:
        return fail("usage: flux2-lora sweep SPEC.yaml --dir DIR (or: flux2-lora sweep status DIR)", 2)
    return _sweep(Path(target[0]), args)


def _optuna_missing() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return True
    return False


def _status(sweep_dir: Path, storage: str | None, as_json: bool) -> int:
    if _optuna_missing():
        return fail(EXTRA_HINT)
    from flux2_lora.experiments.status import format_status, sweep_status
    from flux2_lora.experiments.sweep import SweepError

    try:
        report = sweep_status(sweep_dir, storage)
    except SweepError as e:
        return fail(str(e), 2)
    if as_json:
        from flux2_lora.experiments.compare import jsonable

        print(json.dumps(jsonable(report), indent=1, default=str))
    else:
        print("\n".join(show(line) for line in format_status(report).splitlines()))
    return 0


def own_folder_problem(folder: str) -> str | None:
    """Why ``folder`` cannot hold a sweep: the filesystem root or the home folder, by the rule a run's
    output.dir follows (trials write their run folders there, a new run moves old outputs aside)."""
    from flux2_lora.config.io import validate_section
    from flux2_lora.config.schema import OutputSection

    _, issues = validate_section(OutputSection, {"dir": folder})
    message = issues[0].message if issues else None
    return message.replace("the run", "the sweep").replace("my-lora", "my-sweep") if message else None


def _parse_gpus(text: str | None) -> list[str] | str:
    if not text:
        return []
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids or any(not t.isdigit() for t in ids) or len(set(ids)) != len(ids):
        return f"--gpus: {text!r} must be distinct GPU numbers separated by commas, e.g. 0,1"
    return ids


def _sweep(spec_file: Path, args: argparse.Namespace) -> int:
    if not args.sweep_dir:
        return fail("--dir: give the sweep's folder (study.db and one run directory per trial go there)", 2)
    problem = own_folder_problem(args.sweep_dir)
    if problem:
        return fail(f"--dir: {problem}", 2)
    if args.trials is not None and args.trials < 1:
        return fail("--trials must be at least 1", 2)
    if _optuna_missing():
        return fail(EXTRA_HINT)
    from flux2_lora.experiments.spec import SpecError, build_plan, load_spec
    from flux2_lora.experiments.store import SPEC_FILE
    from flux2_lora.experiments.sweep import Options, Sweep, SweepError
    from flux2_lora.experiments.vet import Target, largest_trial

    gpus = _parse_gpus(args.gpus)
    if isinstance(gpus, str):
        return fail(gpus, 2)
    try:
        spec = load_spec(spec_file)
        plan = build_plan(spec, spec_file.expanduser().resolve().parent, str(spec_file))
        target = Target.choose(args.gpu)
    except SpecError as e:  # a head line and one line per problem, each escaped on its own
        print("\n".join(show(line) for line in str(e).splitlines()), file=sys.stderr)
        return 2
    except ValueError as e:
        return fail(str(e), 2)
    for w in plan.warnings:
        print(f"warning: base: {show(w)}", file=sys.stderr)
    sweep_dir = Path(args.sweep_dir).expanduser().resolve()
    sweep = Sweep(plan, Options(sweep_dir, args.storage, gpus, target, args.trials, args.prune))
    try:
        study = sweep.open()
        copy = sweep_dir / SPEC_FILE
        if copy.resolve() != spec_file.resolve():
            shutil.copyfile(spec_file, copy)  # what `sweep status` and the UI read the study's name from
    except SweepError as e:
        return fail(str(e), 2)
    except OSError as e:
        return fail(f"--dir: cannot write to {show(sweep_dir)}: {e.strerror or e}")
    big = largest_trial(plan, target)
    if big:
        params = ", ".join(f"{k}={v}" for k, v in big["params"].items())
        print(
            f"largest trial ({params}): {big['gib']:.2f} GiB on {big['target']}: "
            f"{big['verdict'].replace('_', ' ')}",
            flush=True,
        )
    previous = _on_signals(sweep)
    try:
        code = sweep.run(study)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"status: flux2-lora sweep status {show(sweep_dir)}")
    return code


def _on_signals(sweep: Any) -> dict[int, Any]:
    """Ctrl-C / SIGTERM stop the sweep: running trials save a checkpoint, are marked failed and queued
    again, so running the command again continues them. A second Ctrl-C ends at once."""

    def handler(signum: int, frame: object) -> None:
        if sweep.stop_event.is_set():
            raise KeyboardInterrupt
        print(
            "stopping: the running trials save a checkpoint first (Ctrl-C again to end now)", file=sys.stderr
        )
        sweep.stop()

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous
