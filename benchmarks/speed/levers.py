"""The speed levers of issue 15, measured one by one in one process on the trainer's own step.

One [klein] 4B trainer (the comparison's settings, see compare.py) is set up once; each segment changes
one thing, times --steps steps after --warmup (waiting for the GPU at both ends) and records the
segment's peak allocated memory:

  defaults          fused AdamW, noise drawn on the GPU, page-locked caches, no wait per step
  old host path     what the trainer did before: noise drawn on the CPU and copied, embeddings stacked
                    on the CPU, and a wait for the loss every step
  foreach AdamW     the unfused optimizer (torch's default on CUDA)
  attention X       each PyTorch SDPA kernel through diffusers' dispatcher (flash, cudnn, efficient)
  compile           regional torch.compile of the repeated blocks (compile time reported apart)
  float8 (+compile) torchao FP8 matrix products for the frozen base layers, in a second trainer

compile and float8 are also measured end to end by compare.py (--variant); here they run with --compile.

    python benchmarks/speed/levers.py [--work /tmp/flux2-speed] [--out levers.json] [--compile]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import our_settings  # noqa: E402


def make_trainer(model: Path, images: Path, work: Path, extra: list[str], steps: int) -> Any:
    from flux2_lora.config.io import load_config
    from flux2_lora.training.trainer import Trainer

    config, _ = load_config(overrides=[*our_settings(model, images, work / "levers-run", steps), *extra])
    trainer = Trainer(config)
    trainer.setup()
    trainer.model.train()
    return trainer


class Clock:
    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.step = 0

    def measure(self, warmup: int, steps: int, per_step_wait: bool = False) -> dict[str, float]:
        import torch

        cuda = torch.cuda.is_available()

        def one() -> Any:
            self.step += 1
            loss = self.trainer.train_step(self.step)
            if per_step_wait:
                float(loss)
            return loss

        t0 = time.perf_counter()
        for _ in range(warmup):
            float(one())
        warm_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = None
        for _ in range(steps):
            loss = one()
        float(loss)
        seconds = (time.perf_counter() - t0) / steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return {"s_per_step": seconds, "warmup_s": warm_s, "peak_allocated_gib": peak}


def old_host_path(trainer: Any) -> Any:
    """The trainer's micro-batch as it was: noise drawn with a CPU generator and copied, embeddings
    stacked on the CPU and copied (the callers then wait for the loss each step)."""
    import torch

    original = trainer.micro_batch

    def micro_batch(step: int, micro: int) -> dict[str, Any]:
        batch = original(step, micro)
        gen = torch.Generator().manual_seed(step)
        batch["noise"] = torch.randn(batch["noise"].shape, generator=gen, dtype=torch.float32).to(
            trainer.device
        )
        embeds = torch.stack([v for v in list(trainer.prompts.cache.values())[:1]])
        batch["prompt_embeds"] = embeds.to(trainer.device, trainer.dtype)
        return batch

    return micro_batch


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/flux2-speed"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--deadline-s", type=float, default=1e9)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tiny", action="store_true", help="CPU check at toy size (builds the folder)")
    parser.add_argument("--compile", action="store_true", help="also the compile and float8 segments")
    args = parser.parse_args()
    import subprocess

    import torch

    start = time.perf_counter()
    model, images = args.work / "klein-4b", args.work / "images"
    if not (model / "model_index.json").is_file():
        cmd = [sys.executable, str(HERE / "build_pipeline.py"), "--out", str(model), "--images", str(images)]
        subprocess.run(cmd + (["--tiny"] if args.tiny else []), check=True)
    cuda = torch.cuda.is_available()
    extra = ["dataset.resolution=64"] if args.tiny else []
    rows: list[dict[str, Any]] = []

    device = torch.cuda.get_device_name(0) if cuda else "cpu"

    def save() -> None:  # after every segment: a kernel that crashes the process loses nothing measured
        if args.out:
            args.out.write_text(
                json.dumps({"device": device, "torch": torch.__version__, "levers": rows}, indent=1)
            )

    def record(name: str, result: dict[str, Any]) -> None:
        result = {"lever": name, **result}
        rows.append(result)
        save()
        base = rows[0]["s_per_step"]
        print(
            f"{name:28} {result['s_per_step'] * 1000:9.1f} ms/step  x{base / result['s_per_step']:.3f} vs defaults"
            f"  warm-up {result['warmup_s']:.1f} s"
            + (f"  peak {result['peak_allocated_gib']:.2f} GiB" if result.get("peak_allocated_gib") else ""),
            flush=True,
        )

    def time_left() -> bool:
        return time.perf_counter() - start < args.deadline_s

    trainer = make_trainer(model, images, args.work, extra, 10_000)
    clock = Clock(trainer)
    record("defaults", clock.measure(args.warmup, args.steps))
    fast_batch = trainer.micro_batch
    trainer.micro_batch = old_host_path(trainer)
    record("old host path", clock.measure(args.warmup, args.steps, per_step_wait=True))
    trainer.micro_batch = fast_batch
    groups = trainer.optimizer.optimizer.param_groups
    if cuda:
        for g in groups:
            g["fused"], g["foreach"] = False, True
        record("foreach AdamW", clock.measure(args.warmup, args.steps))
        for g in groups:
            g["fused"], g["foreach"] = True, False
        # cudnn last: at [klein] 4B size it hit an illegal memory access on an H200 (torch 2.11), which
        # leaves the CUDA context unusable for anything after it.
        for backend in ("flash", "efficient", "cudnn"):
            # cudnn is not a config choice (see performance.attention_backend); measured here to recheck
            names = {"flash": "_native_flash", "efficient": "_native_efficient", "cudnn": "_native_cudnn"}
            try:
                trainer.transformer.set_attention_backend(names[backend])
                record(f"attention {backend}", clock.measure(args.warmup, args.steps))
            except Exception as e:  # a kernel this GPU or build lacks
                rows.append({"lever": f"attention {backend}", "error": f"{type(e).__name__}: {e}"[:300]})
                save()
                print(f"attention {backend}: {rows[-1]['error']}", flush=True)
                break  # the context is unusable after an illegal memory access
        trainer.transformer.set_attention_backend("native")
        if args.compile and time_left():
            trainer.transformer.compile_repeated_blocks()
            record("compile", clock.measure(args.warmup, args.steps))
    del trainer, clock
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if cuda and args.compile and time_left():
        try:
            fp8 = make_trainer(model, images, args.work, [*extra, "performance.float8=true"], 10_000)
            clock = Clock(fp8)
            record("float8", clock.measure(args.warmup, args.steps))
            if time_left():
                fp8.transformer.compile_repeated_blocks()
                record("float8 + compile", clock.measure(args.warmup, args.steps))
        except Exception as e:
            rows.append({"lever": "float8", "error": f"{type(e).__name__}: {e}"[:500]})
            print(f"float8: {rows[-1]['error']}", flush=True)
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    if args.out:
        args.out.write_text(
            json.dumps({"device": device, "torch": torch.__version__, "levers": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
