"""``flux2-lora train``: run the trainer in this process, or N processes through accelerate."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from flux2_lora.cli.common import add_config_args, config_from_args, fail, show
from flux2_lora.cli.schema_flags import add_section_flags, section_overrides
from flux2_lora.config import TrainConfig
from flux2_lora.process_tree import exit_with_parent, run_child, trainer_command
from flux2_lora.runs import LOG_FILE
from flux2_lora.training.outcome import RunOutcome
from flux2_lora.training.tracking import DEBUG_ENV

EXIT_CONFIG = 2
EXIT_BUSY = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a LoRA (with no config or preset: the quickstart demo, on the embedded model)"
    )
    add_config_args(p)
    p.add_argument(
        "--resume",
        metavar="latest|auto|PATH",
        help="latest: continue from the newest readable checkpoint of output.dir (an error if it has none); "
        "auto: the same, or start the run over when it has no checkpoint yet (e.g. it was stopped before "
        "its first one; earlier outputs move to previous/); PATH: continue from that checkpoint folder",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="when training fails, also print the traceback here (it always goes to <output.dir>/train.log)",
    )
    # --strategy, --num-processes, --num-machines, --machine-rank, --main-process-ip, --main-process-port,
    # --[no-]fsdp-reshard-after-forward, --[no-]fsdp-cpu-offload: the distributed section's fields.
    add_section_flags(p, "distributed")
    p.add_argument(
        "--preflight",
        action="store_true",
        help="load the model with the run's settings, time a few steps, print measured vs estimated memory and the ETA, exit",
    )
    p.set_defaults(func=run)


def check_output_dir(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return f"output.dir: cannot write to {path}: {e.strerror or e}"
    return None


def _default_to_quickstart(args: argparse.Namespace) -> None:
    """Plain ``flux2-lora train`` (no config file, no preset) trains the quickstart demo: the schema's
    defaults name the embedded demo model and dataset but a real model's 1000 steps at 1024 px, which on
    a CPU would run for hours and learn nothing a tiny model can show. A config or a preset is taken as
    given; so is a --set model.path naming a real model."""
    if args.config or args.config_opt or args.preset:
        return
    from flux2_lora.config.io import ConfigError, load_config
    from flux2_lora.variants import is_demo

    try:
        plain, _ = load_config(overrides=args.overrides)
    except ConfigError:
        return  # config_from_args says what is wrong
    if is_demo(plain.model.path):
        args.preset = ["quickstart"]
        print(
            "no config or preset given: training the quickstart demo (--preset quickstart)", file=sys.stderr
        )


def run(args: argparse.Namespace) -> int:
    args.overrides = [*args.overrides, *section_overrides(args)]
    _default_to_quickstart(args)
    config = config_from_args(args)
    if config is None:
        return EXIT_CONFIG
    run_dir = Path(config.output.dir).expanduser().resolve()
    in_worker = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by accelerate's launcher
    # Only the main process of machine 0 writes the run directory; another machine may not even see it,
    # so its launcher and workers leave --resume auto to the main process (the trainer broadcasts it).
    writes_run_dir = os.environ.get("RANK", "0") == "0" if in_worker else config.distributed.machine_rank == 0
    if writes_run_dir:
        problem = check_output_dir(run_dir)
        if problem:
            return fail(problem)
    if not in_worker and not _assessment_allows(config):
        return EXIT_CONFIG
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # the trainer's console log and accelerate's workers read it
    if args.preflight:
        return _preflight(config)
    resume = _auto_resume(run_dir) if args.resume == "auto" and writes_run_dir else args.resume
    if config.distributed.world_size > 1 and not in_worker:
        args.resume = resume
        return _launch_distributed(args, config, run_dir)
    if in_worker:
        exit_with_parent()  # the elastic agent's workers do not get its group's signals
    return train_here(config, resume, debug=args.debug)


def _assessment_allows(config: TrainConfig) -> bool:
    """Refuse what the one assessment calls an error (the Train tab's Start refuses the same, in the same
    words) before anything loads; a run the estimate says does not fit is said, not refused: this machine
    may have more than the GPU class assumed."""
    from flux2_lora.assess import assess, dataset_facts

    a = assess(config, dataset=dataset_facts(config), recommendations=False)
    for e in a.errors:
        print(f"error: {e}", file=sys.stderr)
    for b in a.blockers:
        print(f"warning: {b}", file=sys.stderr)
    return a.ok


def _auto_resume(run_dir: Path) -> str | None:
    """--resume auto: 'latest' when a readable checkpoint exists, else None (start over, said so)."""
    from flux2_lora.runs import list_checkpoints
    from flux2_lora.training.checkpoint import validate_checkpoint

    if any(validate_checkpoint(p) is None for p in list_checkpoints(run_dir)):
        return "latest"
    print(
        f"--resume auto: no readable checkpoint in {show(run_dir)}; starting the run over"
        " (the earlier run's outputs move to previous/)",
        file=sys.stderr,
    )
    return None


def train_here(config: TrainConfig, resume: str | None, debug: bool = False) -> int:
    from flux2_lora.training.quiet import quiet_libraries

    quiet_libraries()
    from flux2_lora.data.scan import DatasetError
    from flux2_lora.runs import RunBusyError, RunWriteError
    from flux2_lora.training.checkpoint import CheckpointError
    from flux2_lora.training.evaluation import EvalError
    from flux2_lora.training.model import ModelLoadError
    from flux2_lora.training.optim import OptimizerUnavailable
    from flux2_lora.training.outcome import TrainingDiverged
    from flux2_lora.training.trainer import run_training

    run_dir = Path(config.output.dir).expanduser().resolve()
    explained = (
        ModelLoadError,
        DatasetError,
        CheckpointError,
        OptimizerUnavailable,
        EvalError,
        RunWriteError,
        TrainingDiverged,
    )
    try:
        return exit_code(run_training(config, resume))
    except RunBusyError as e:
        return fail(str(e), EXIT_BUSY)
    except explained as e:
        return fail(_with_log(str(e), run_dir))
    except (
        Exception
    ) as e:  # the traceback goes to train.log (and here with --debug); the console gets one line
        _log_traceback(run_dir, debug)
        return fail(_with_log(f"training failed: {type(e).__name__}: {_first_line(e)}", run_dir))


def exit_code(outcome: RunOutcome) -> int:
    """0 for a finished run and for a stop (asked for, with a checkpoint to resume: the UI and sweeps
    read which from status.json); a failure is 1, from the exception that ends it."""
    return 0 if outcome.state in ("finished", "stopped") else 1


def _first_line(e: BaseException, limit: int = 500) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[:limit] + "…"


def _with_log(message: str, run_dir: Path) -> str:
    log_file = run_dir / LOG_FILE
    return f"{message} (log: {show(log_file)})" if log_file.is_file() else message


def _log_traceback(run_dir: Path, debug: bool) -> None:
    """The current exception with its traceback, into train.log, and onto the console only with --debug."""
    logger = logging.getLogger("flux2_lora")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "training failed", (), sys.exc_info())
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
    if not files:  # it failed before the trainer opened its log
        try:
            with (run_dir / LOG_FILE).open("a", encoding="utf-8", errors="backslashreplace") as f:
                f.write("training failed\n" + traceback.format_exc())
        except OSError:
            pass
    if debug:
        traceback.print_exc(file=sys.stderr)


def _launch_distributed(args: argparse.Namespace, config: TrainConfig, run_dir: Path) -> int:
    """Start this machine's workers through accelerate's launcher. Machine 0 holds the run lock for them
    (rank 0 writes the run directory); another machine's launcher touches nothing there."""
    from flux2_lora.runs import RunBusyError, RunLock
    from flux2_lora.training.session import LAUNCHED_AT_ENV, LOCK_HELD_ENV

    main_machine = config.distributed.machine_rank == 0
    lock = RunLock(run_dir) if main_machine else None
    try:
        if lock is not None:
            lock.acquire()
    except RunBusyError as e:
        return fail(str(e), EXIT_BUSY)
    scratch = None
    try:
        _prepare_demo(config)
        if main_machine:
            resolved = run_dir / "config.launch.yaml"
        else:
            scratch = tempfile.mkdtemp(prefix="flux2-lora-launch-")
            resolved = Path(scratch) / "config.launch.yaml"
        cmd = launch_command(config, resolved, args.resume)
        env = {**os.environ, LOCK_HELD_ENV: "1", LAUNCHED_AT_ENV: str(time.time())}
        if config.model.device == "cpu" or not _has_cuda():
            env["ACCELERATE_USE_CPU"] = "true"
        return run_child(cmd, env)
    finally:
        if lock is not None:
            lock.release()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _prepare_demo(config: TrainConfig) -> None:
    """Build the embedded demo model and dataset here, once, before the workers start: a worker that built
    them would do so as a non-main process of a process group, and transformers' save_pretrained then
    skips the text encoder's weights (a first run with a fresh cache failed so)."""
    from flux2_lora.data.demo import ensure_demo_dataset, is_demo

    if is_demo(config.model.path):
        from flux2_lora.training.demo_model import ensure_demo_model

        ensure_demo_model()
    if is_demo(config.dataset.path):
        ensure_demo_dataset()
    from flux2_lora.data.demo_edit import ensure_demo_edit_dataset, is_demo_edit

    if is_demo_edit(config.dataset.path):
        ensure_demo_edit_dataset()


def launch_command(config, resolved: Path, resume: str | None) -> list[str]:  # type: ignore[no-untyped-def]
    """accelerate's launcher for this machine's share of ``config.distributed``; the workers read the
    resolved config saved to ``resolved``.

    On GPUs the workers join an NCCL process group, on CPU (ACCELERATE_USE_CPU) a gloo one; FSDP is
    applied by the trainer itself (torch's fully_shard), the same way on both, because accelerate
    offers FSDP only on GPUs."""
    from flux2_lora.config.io import save_config

    d = config.distributed
    save_config(config, resolved)
    port = d.main_process_port or (29500 if d.num_machines > 1 else 0)  # 0: accelerate picks a free one
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(d.world_size),  # accelerate counts processes over all machines
        "--num_machines",
        str(d.num_machines),
        "--machine_rank",
        str(d.machine_rank),
        "--main_process_port",
        str(port),
        "--dynamo_backend",
        "no",
    ]
    if d.num_machines > 1:
        launcher += ["--main_process_ip", d.main_process_ip]
    return trainer_command(resolved, resume=resume, python=launcher)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _preflight(config: TrainConfig) -> int:
    from flux2_lora.training.quiet import quiet_libraries

    quiet_libraries()
    from flux2_lora.data.scan import DatasetError
    from flux2_lora.training.evaluation import EvalError
    from flux2_lora.training.model import ModelLoadError
    from flux2_lora.training.optim import OptimizerUnavailable
    from flux2_lora.training.preflight import format_result, run_preflight

    try:
        result = run_preflight(config)
    except (ModelLoadError, DatasetError, OptimizerUnavailable, EvalError) as e:
        return fail(str(e))
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            return fail(
                f"pre-flight ran out of memory: {e}; run `flux2-lora estimate` for the changes that make it fit"
            )
        raise
    print(format_result(result))
    return 0
