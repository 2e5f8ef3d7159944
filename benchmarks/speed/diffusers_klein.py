"""Run diffusers' train_dreambooth_lora_flux2_klein.py unmodified and measure steps/s + peak GPU memory.

The script is not part of this repository (fetch it from diffusers' examples/dreambooth/ and pass its path).

Usage:
  python benchmarks/speed/diffusers_klein.py --script PATH [--warmup K] [--json-out FILE] -- <script arguments...>

How it measures (no edits to the script):
  * torch.optim.optimizer.register_optimizer_step_post_hook: a global hook that fires after every
    optimizer.step() (the script calls it once per training step with grad-accumulation 1).  It calls
    torch.cuda.synchronize() and records time.perf_counter().  step_seconds[0] is measured from the end of
    the training `accelerator.prepare(...)` call (after latent/text caching) to the first step's end;
    step_seconds[i] = t_i - t_{i-1}.  Each interval includes the whole loop iteration (batch fetch,
    forward, backward, clip_grad_norm, AdamW step, plus the script's own loss.item()/tracker log of the
    previous step).
  * accelerate.Accelerator.prepare is wrapped: after it returns, the CUDA peak-memory counters are reset,
    so max_allocated_gib / max_reserved_gib cover the training phase only (weights already resident are
    included, the one-off caching phase is not; its peak is reported as pre_train_max_*).
  * steps_per_s = (#steps after the first --warmup steps) / (sum of their step_seconds).
  * The script runs via runpy.run_path(run_name="__main__") with sys.argv set, so its
    `if __name__ == "__main__": args = parse_args(); main(args)` block runs as usual (it relies on the
    module-global `args`, which run_path provides).
  * HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE / WANDB_MODE are forced offline.

The last line printed is one JSON object:
  {"steps_per_s":..., "step_seconds":[...], "max_allocated_gib":..., "max_reserved_gib":..., ...}
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

for k, v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(k, v)


def main() -> int:
    argv = sys.argv[1:]
    if "--" in argv:
        i = argv.index("--")
        own, script_args = argv[:i], argv[i + 1 :]
    else:
        own, script_args = [], argv
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--script", required=True, help="diffusers' examples/dreambooth/train_dreambooth_lora_flux2_klein.py"
    )
    ap.add_argument("--warmup", type=int, default=2, help="steps excluded from steps_per_s")
    ap.add_argument("--json-out", default=None)
    opts = ap.parse_args(own)

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    cuda = torch.cuda.is_available()
    state = {"t_prepare": None, "steps": [], "pre_alloc": 0, "pre_res": 0, "lora": None}

    def _sync():
        if cuda:
            torch.cuda.synchronize()

    def step_hook(optimizer, args, kwargs):
        _sync()
        state["steps"].append(time.perf_counter())
        if state["lora"] is None:
            ps = [p for g in optimizer.param_groups for p in g["params"]]
            state["lora"] = {
                "optimizer": type(optimizer).__name__,
                "trainable_params": int(sum(p.numel() for p in ps)),
                "tensors": len(ps),
                "dtypes": sorted({str(p.dtype) for p in ps}),
            }

    register_optimizer_step_post_hook(step_hook)

    import accelerate

    orig_prepare = accelerate.Accelerator.prepare

    def prepare(self, *a, **k):
        out = orig_prepare(self, *a, **k)
        _sync()
        if cuda:
            state["pre_alloc"] = max(state["pre_alloc"], torch.cuda.max_memory_allocated())
            state["pre_res"] = max(state["pre_res"], torch.cuda.max_memory_reserved())
            torch.cuda.reset_peak_memory_stats()
        state["t_prepare"] = time.perf_counter()
        return out

    accelerate.Accelerator.prepare = prepare

    import runpy

    sys.argv = [opts.script, *script_args]
    ok, err = True, None
    t_start = time.perf_counter()
    try:
        runpy.run_path(opts.script, run_name="__main__")
    except SystemExit as e:  # argparse errors etc.
        if e.code not in (None, 0):
            ok, err = False, f"SystemExit({e.code})"
    except BaseException as e:
        traceback.print_exc()
        ok, err = False, f"{type(e).__name__}: {e}"
    t_end = time.perf_counter()

    ts = state["steps"]
    step_seconds = []
    if ts:
        prev = state["t_prepare"] if state["t_prepare"] is not None else ts[0]
        for t in ts:
            step_seconds.append(t - prev)
            prev = t
    timed = step_seconds[opts.warmup :] if len(step_seconds) > opts.warmup else []
    gib = 1024**3
    res = {
        "steps_per_s": (len(timed) / sum(timed)) if timed and sum(timed) > 0 else None,
        "step_seconds": [round(s, 5) for s in step_seconds],
        "max_allocated_gib": (torch.cuda.max_memory_allocated() / gib) if cuda else None,
        "max_reserved_gib": (torch.cuda.max_memory_reserved() / gib) if cuda else None,
        "pre_train_max_allocated_gib": (state["pre_alloc"] / gib) if cuda else None,
        "pre_train_max_reserved_gib": (state["pre_res"] / gib) if cuda else None,
        "num_steps": len(step_seconds),
        "warmup_excluded": min(opts.warmup, len(step_seconds)),
        "median_step_s": (sorted(timed)[len(timed) // 2] if timed else None),
        "lora": state["lora"],
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "wall_s": round(t_end - t_start, 2),
        "ok": ok,
        "error": err,
    }
    line = json.dumps(res)
    if opts.json_out:
        Path(opts.json_out).write_text(line + "\n")
    sys.stdout.flush()
    print(line, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
