"""Pre-flight: load the run's real model and settings, time a few steps at the largest shape, and
report measured peaks next to the estimate, seconds per step, and the ETA of the whole run.

Nothing of the run directory is touched except ``preflight.json`` (the UI shows it before Start).
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from flux2_lora.config import TrainConfig
from flux2_lora.training.tracking import estimate_summary, measured_peaks
from flux2_lora.training.trainer import Trainer

log = logging.getLogger("flux2_lora")
PREFLIGHT_FILE = "preflight.json"
WARMUP_STEPS = 2
TIMED_STEPS = 8


def _largest_first(t: Trainer) -> list[int]:
    """Steps to time, the largest sample's first (target and reference tokens: the sequence the estimate
    sizes) so the peak is the worst case."""
    steps = list(range(1, WARMUP_STEPS + TIMED_STEPS + 1))
    if not any(it.bucket or it.references for it in t.items):  # one size (buckets: entries' sizes too)
        return steps
    acc = t.accelerator
    assert t.schedule is not None
    res = t.config.dataset.resolution
    area = {i: it.tokens(res) for i, it in enumerate(t.items)}
    biggest = max(area.values())
    for step in range(1, 10_000):
        pairs = t.schedule.micro_batch(step, 0, acc.process_index, acc.num_processes, 1)
        if area[pairs[0][0]] == biggest:
            return [step, *steps]
    return steps


def run_preflight(config: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(config)
    trainer.setup()
    load_s = time.perf_counter() - t0
    times = []
    for n, step in enumerate(_largest_first(trainer)):
        s0 = time.perf_counter()
        float(trainer.train_step(step))  # waits for the GPU, so the step's time is all in
        if n >= WARMUP_STEPS:
            times.append(time.perf_counter() - s0)
    sec_per_step = statistics.median(times)
    val = config.validation
    sample_s = 0.0
    if val.enabled:
        s0 = time.perf_counter()
        trainer.draw_samples(config.training.max_steps, record=False)
        sample_s = time.perf_counter() - s0
    with tempfile.TemporaryDirectory() as tmp:
        from flux2_lora.training.checkpoint import save_checkpoint

        s0 = time.perf_counter()
        save_checkpoint(
            Path(tmp),
            1,
            trainer.adapter_state(),
            trainer.optimizer.state_dict() if config.output.save_optimizer_state else None,
            trainer.lr_scheduler.state_dict(),
            {},
            keep=1,
        )
        ckpt_s = time.perf_counter() - s0
    total = config.training.max_steps
    n_samples = ((total - 1) // val.every_n_steps + 1) if val.enabled else 0
    n_ckpts = total // config.output.checkpoint_every if config.output.checkpoint_every else 0
    eta = load_s + total * sec_per_step + n_samples * sample_s + (n_ckpts + 1) * ckpt_s
    result = {
        "device": str(trainer.device),
        "dtype": str(trainer.dtype),
        "variant": trainer.variant,
        "load_and_cache_s": load_s,
        "seconds_per_step": sec_per_step,
        "sampling_s": sample_s,
        "checkpoint_s": ckpt_s,
        "eta_s": eta,
        "measured": measured_peaks(),
        "estimate": estimate_summary(config, trainer.accelerator.num_processes),
        "image_tokens": max(it.tokens(config.dataset.resolution) for it in trainer.items),
        "max_steps": total,
        "time": time.time(),
    }
    out = Path(config.output.dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / PREFLIGHT_FILE).write_text(json.dumps(result, indent=1))
    except OSError as e:
        log.warning("could not write %s: %s", out / PREFLIGHT_FILE, e)
    return result


def format_result(r: dict[str, Any]) -> str:
    def gib(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f} GiB"

    est = r.get("estimate") or {}
    m = r["measured"]
    lines = [
        f"pre-flight on {r['device']} ({r['dtype']}), variant {r['variant']}",
        f"  load + cache        {r['load_and_cache_s']:.1f} s",
        f"  seconds per step    {r['seconds_per_step']:.3f} s  (median of {TIMED_STEPS} after {WARMUP_STEPS} warm-up)",
        f"  one validation      {r['sampling_s']:.1f} s;  one checkpoint {r['checkpoint_s']:.2f} s",
        f"  ETA for {r['max_steps']} steps  {r['eta_s']:.0f} s ({r['eta_s'] / 60:.1f} min)",
        f"  GPU peak            measured {gib(m['gpu_allocated_peak_gib'])}   estimated {gib(est.get('allocated_peak_gib'))}",
        f"  host peak RSS       measured {gib(m['host_peak_rss_gib'])}   estimated {gib(est.get('host_peak_gib'))}",
    ]
    return "\n".join(lines)
