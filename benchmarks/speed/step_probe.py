"""Run a trainer unmodified in this process and time its optimizer steps (the one measuring code of
benchmarks/speed: diffusers_klein.py and edit_cpu_pair.py both go through it).

    python benchmarks/speed/step_probe.py (--script PATH | --module NAME) [--warmup K] [--threads N]
        [--json-out FILE] -- <the trainer's own arguments...>

``--script`` runs a file (diffusers' example scripts, which are not part of this repository) and
``--module`` a package's entry point (``flux2_lora.cli``), each as ``__main__`` with ``sys.argv`` set, so
the same probe measures both sides of a comparison.

How it measures (no edits to the trainer):
  * torch.optim.optimizer.register_optimizer_step_post_hook: a global hook after every optimizer.step()
    (one per training step at gradient accumulation 1). It waits for the GPU when there is one, records
    time.perf_counter() and the process's current resident memory (VmRSS, /proc/self/status).
    step_seconds[0] is measured from the end of the last ``accelerate.Accelerator.prepare`` call when the
    trainer makes one (diffusers' scripts, after their caching), else from the first step's end;
    step_seconds[i] = t_i - t_{i-1}: the whole loop iteration (batch, forward, backward, clipping, step,
    the trainer's own logging).
  * steps_per_s / s_per_step: over the steps after the first --warmup ones; cpu_s_per_step: the
    process's CPU time (time.process_time, all threads) per step over the same steps (needs --warmup ≥ 1).
  * train_rss_mib: the largest VmRSS seen at a step after --warmup (the training phase); vm_hwm_mib: the
    process's peak resident memory (VmHWM) when the trainer returns, caching phase included.
  * CUDA: after each Accelerator.prepare the peak-memory counters are reset, so max_allocated_gib /
    max_reserved_gib cover the training phase (its peak before is pre_train_max_*).
  * --profile-steps N: torch.profiler over N steps after the warmup ones; "ops" gets each operator's
    calls and self CPU ms per step (for a profile run, not a timed one).
  * --threads N sets OMP/MKL_NUM_THREADS and torch.set_num_threads(N) before the trainer starts.
  * HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE / WANDB_MODE are forced offline.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
MIB = 1024**2
GIB = 1024**3


def proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the probe's own arguments, the trainer's) split at the first ``--``."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return [], argv


def op_table(prof: Any, steps: int) -> dict[str, dict[str, float]]:
    """torch.profiler's operators per step: calls (the same whatever else the machine runs) and self
    CPU milliseconds."""
    return {
        e.key: {"calls": e.count / steps, "self_cpu_ms": e.self_cpu_time_total / 1000 / steps}
        for e in prof.key_averages()
    }


def probe(run: Any, warmup: int, profile_steps: int = 0) -> dict[str, Any]:
    """Call ``run()`` (which runs the trainer) with the hooks installed; the measurements as a dict.
    ``profile_steps`` > 0: the torch profiler records that many steps after the warmup ones (their
    times are then the profiler's too) and the result gets their ``ops``."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    cuda = torch.cuda.is_available()
    state: dict[str, Any] = {
        "t_prepare": None,
        "steps": [],
        "cpu": [],
        "rss": [],
        "pre_alloc": 0,
        "pre_res": 0,
    }
    state["lora"] = None

    def _sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        _sync()
        state["steps"].append(time.perf_counter())
        state["cpu"].append(time.process_time())
        state["rss"].append(proc_status_kib("VmRSS"))
        if profile_steps and len(state["steps"]) == warmup:
            state["prof"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            state["prof"].start()
        elif profile_steps and len(state["steps"]) == warmup + profile_steps and "prof" in state:
            state["prof"].stop()
            state["ops"] = op_table(state["prof"], profile_steps)
        if state["lora"] is None:
            ps = [p for g in optimizer.param_groups for p in g["params"]]
            state["lora"] = {
                "optimizer": type(optimizer).__name__,
                "trainable_params": int(sum(p.numel() for p in ps)),
                "tensors": len(ps),
                "dtypes": sorted({str(p.dtype) for p in ps}),
            }

    register_optimizer_step_post_hook(step_hook)
    try:
        import accelerate
    except ImportError:
        accelerate = None
    if accelerate is not None:
        orig_prepare = accelerate.Accelerator.prepare

        def prepare(self: Any, *a: Any, **k: Any) -> Any:
            out = orig_prepare(self, *a, **k)
            _sync()
            if cuda:
                state["pre_alloc"] = max(state["pre_alloc"], torch.cuda.max_memory_allocated())
                state["pre_res"] = max(state["pre_res"], torch.cuda.max_memory_reserved())
                torch.cuda.reset_peak_memory_stats()
            state["t_prepare"] = time.perf_counter()
            return out

        accelerate.Accelerator.prepare = prepare

    ok, err = True, None
    t_start = time.perf_counter()
    try:
        run()
    except SystemExit as e:  # argparse errors, a CLI's exit code
        if e.code not in (None, 0):
            ok, err = False, f"SystemExit({e.code})"
    except BaseException as e:
        traceback.print_exc()
        ok, err = False, f"{type(e).__name__}: {e}"
    t_end = time.perf_counter()
    hwm = proc_status_kib("VmHWM")

    ts = state["steps"]
    step_seconds = []
    prev = state["t_prepare"] if state["t_prepare"] is not None else (ts[0] if ts else 0.0)
    for t in ts:
        step_seconds.append(t - prev)
        prev = t
    timed = step_seconds[warmup:] if len(step_seconds) > warmup else []
    rss = [r for r in state["rss"][warmup:] if r is not None]
    total = sum(timed)
    cpu = state["cpu"]
    # CPU seconds of the process per timed step (all its threads): far less sensitive than the wall clock
    # to other work on a shared machine. From the step before the first timed one (a warmup step).
    cpu_timed = cpu[warmup - 1 :] if warmup >= 1 and len(cpu) > warmup else []
    return {
        "steps_per_s": (len(timed) / total) if timed and total > 0 else None,
        "s_per_step": (total / len(timed)) if timed else None,
        "cpu_s_per_step": ((cpu_timed[-1] - cpu_timed[0]) / (len(cpu_timed) - 1)) if cpu_timed else None,
        "step_seconds": [round(s, 5) for s in step_seconds],
        "train_rss_mib": (max(rss) / 1024) if rss else None,
        "vm_hwm_mib": (hwm / 1024) if hwm is not None else None,
        "max_allocated_gib": (torch.cuda.max_memory_allocated() / GIB) if cuda else None,
        "max_reserved_gib": (torch.cuda.max_memory_reserved() / GIB) if cuda else None,
        "pre_train_max_allocated_gib": (state["pre_alloc"] / GIB) if cuda else None,
        "pre_train_max_reserved_gib": (state["pre_res"] / GIB) if cuda else None,
        "num_steps": len(step_seconds),
        "warmup_excluded": min(warmup, len(step_seconds)),
        "median_step_s": (sorted(timed)[len(timed) // 2] if timed else None),
        "lora": state["lora"],
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "wall_s": round(t_end - t_start, 2),
        "ok": ok,
        "error": err,
        "ops": state.get("ops"),
    }


def runner(script: str | None, module: str | None, args: list[str]) -> Any:
    """A callable that runs the script file or module as ``__main__`` with ``sys.argv`` set (a script's
    ``if __name__ == "__main__": args = parse_args(); main(args)`` relies on the module-global ``args``,
    which run_path provides)."""
    import runpy

    def run() -> None:
        if script is not None:
            sys.argv = [script, *args]
            runpy.run_path(script, run_name="__main__")
        else:
            assert module is not None
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)

    return run


def main(argv: list[str] | None = None, default_script_help: str = "the trainer script to run") -> int:
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)
    own, target_args = split_argv(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser()
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--script", help=default_script_help)
    what.add_argument("--module", help="a module run as __main__ (e.g. flux2_lora.cli)")
    ap.add_argument("--warmup", type=int, default=2, help="steps excluded from steps_per_s")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: leave torch's default)")
    ap.add_argument("--profile-steps", type=int, default=0, help="torch-profile this many steps after warmup")
    ap.add_argument("--json-out", default=None)
    opts = ap.parse_args(own)
    if opts.threads > 0:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[k] = str(opts.threads)
        import torch

        torch.set_num_threads(opts.threads)
    res = probe(runner(opts.script, opts.module, target_args), opts.warmup, opts.profile_steps)
    line = json.dumps(res)
    if opts.json_out:
        Path(opts.json_out).write_text(line + "\n")
    sys.stdout.flush()
    print(line, flush=True)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
