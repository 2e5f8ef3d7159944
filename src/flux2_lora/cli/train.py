"""``flux2-lora train``: run the trainer in this process, or N processes through accelerate."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from flux2_lora.cli.common import add_config_args, config_from_args, fail, show
from flux2_lora.config import TrainConfig
from flux2_lora.runs import LOG_FILE
from flux2_lora.training.tracking import DEBUG_ENV

EXIT_CONFIG = 2
EXIT_BUSY = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a LoRA (default: the quickstart on the embedded demo needs --preset quickstart)"
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
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes (GPUs, or CPU processes) via accelerate",
    )
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


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None:
        return EXIT_CONFIG
    run_dir = Path(config.output.dir).expanduser().resolve()
    problem = check_output_dir(run_dir)
    if problem:
        return fail(problem)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # the trainer's console log and accelerate's workers read it
    if args.preflight:
        return _preflight(config)
    resume = _auto_resume(run_dir) if args.resume == "auto" else args.resume
    if args.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        args.resume = resume
        return _launch_distributed(args, config, run_dir)
    return train_here(config, resume, debug=args.debug)


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
    from flux2_lora.runs import RunBusyError
    from flux2_lora.training.checkpoint import CheckpointError
    from flux2_lora.training.evaluation import EvalError
    from flux2_lora.training.model import ModelLoadError
    from flux2_lora.training.optim import OptimizerUnavailable
    from flux2_lora.training.trainer import run_training

    run_dir = Path(config.output.dir).expanduser().resolve()
    try:
        return run_training(config, resume)
    except RunBusyError as e:
        return fail(str(e), EXIT_BUSY)
    except (ModelLoadError, DatasetError, CheckpointError, OptimizerUnavailable, EvalError) as e:
        return fail(_with_log(str(e), run_dir))
    except (
        Exception
    ) as e:  # the traceback goes to train.log (and here with --debug); the console gets one line
        _log_traceback(run_dir, debug)
        return fail(_with_log(f"training failed: {type(e).__name__}: {_first_line(e)}", run_dir))


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
    """Hold the run lock here and start N workers; rank 0 writes the run directory."""
    from flux2_lora.config.io import save_config
    from flux2_lora.runs import RunBusyError, RunLock
    from flux2_lora.training.session import LAUNCHED_AT_ENV, LOCK_HELD_ENV

    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunBusyError as e:
        return fail(str(e), EXIT_BUSY)
    try:
        resolved = run_dir / "config.launch.yaml"
        save_config(config, resolved)
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(args.num_processes),
            "--num_machines",
            "1",
            "--dynamo_backend",
            "no",
        ]
        # accelerate's multi-process launcher (torch.distributed.run); on CPU the workers' Accelerator(cpu=True)
        # joins a gloo process group (accelerate's MULTI_CPU), on GPUs an NCCL one.
        cmd.append("--multi_gpu")
        cmd += ["-m", "flux2_lora.cli", "train", str(resolved)]
        if args.resume:
            cmd += ["--resume", args.resume]
        env = {**os.environ, LOCK_HELD_ENV: "1", LAUNCHED_AT_ENV: str(time.time())}
        if config.model.device == "cpu" or not _has_cuda():
            env["ACCELERATE_USE_CPU"] = "true"
        return subprocess.call(cmd, env=env)
    finally:
        lock.release()


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
