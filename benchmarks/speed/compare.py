"""Steps/s and peak GPU memory of flux2-lora beside diffusers' FLUX.2 [klein] LoRA script, same GPU,
same settings: [klein] 4B (random weights, real shapes), 1024², rank 16 on the script's default target
layers, batch 1, gradient checkpointing, bf16, cached latents and caption embeddings, AdamW 1e-4.

Runs are interleaved (diffusers, ours, ours + variants, then again in another order) and each is a fresh
process; the table gives the median of the rounds and ratios to diffusers' script.

    python benchmarks/speed/compare.py --diffusers-script PATH/train_dreambooth_lora_flux2_klein.py \\
        [--rounds 2] [--steps 40] [--variant performance.compile=true] [--out results.json]

Steady-state steps/s: ours from the times of the logged steps after --warmup (each log waits for the
GPU); diffusers' from its per-step times after --warmup (it waits for the GPU every step itself, see
diffusers_klein.py). Peak: the training phase's max_memory_allocated / max_memory_reserved (the caching
phase before it is reported apart by both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROMPT = "a photo of sks dog"


def run_diffusers(script: Path, model: Path, images: Path, out: Path, steps: int, warmup: int) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "diffusers_klein.py"),
        "--script",
        str(script),
        "--warmup",
        str(warmup),
        "--",
        "--pretrained_model_name_or_path",
        str(model),
        "--instance_data_dir",
        str(images),
        "--instance_prompt",
        PROMPT,
        "--output_dir",
        str(out),
        "--resolution",
        "1024",
        "--rank",
        "16",
        "--lora_alpha",
        "16",
        "--train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "1",
        "--gradient_checkpointing",
        "--mixed_precision",
        "bf16",
        "--cache_latents",
        "--text_encoder_out_layers",
        "9",
        "18",
        "27",
        "--learning_rate",
        "1e-4",
        "--lr_scheduler",
        "constant",
        "--lr_warmup_steps",
        "0",
        "--max_train_steps",
        str(steps),
        "--checkpointing_steps",
        "1000000",
        "--report_to",
        "tensorboard",
        "--seed",
        "0",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    row = json.loads(lines[-1]) if lines else {"ok": False, "error": proc.stderr[-1500:]}
    row["process_wall_s"] = round(time.perf_counter() - t0, 1)
    if not row.get("ok"):
        row["stderr_tail"] = proc.stderr[-1500:]
    return {
        "name": "diffusers",
        "ok": bool(row.get("ok")),
        "steps_per_s": row.get("steps_per_s"),
        "train_allocated_gib": row.get("max_allocated_gib"),
        "train_reserved_gib": row.get("max_reserved_gib"),
        "raw": row,
    }


def our_settings(model: Path, images: Path, out: Path, steps: int) -> list[str]:
    """Our config for the comparison, as --set values (the same settings as run_diffusers)."""
    return [
        f"model.path={model}",
        "model.variant=klein-4b",
        f"dataset.path={images}",
        f"dataset.default_caption={PROMPT}",
        "dataset.resolution=1024",
        "lora.rank=16",
        "lora.alpha=16",
        "lora.target_modules=[default]",
        "training.batch_size=1",
        "training.optimizer=adamw",
        "training.learning_rate=1e-4",
        "training.weight_decay=1e-4",
        "training.max_grad_norm=1.0",
        f"training.max_steps={steps}",
        "training.seed=0",
        "memory.gradient_checkpointing=true",
        "memory.cache_latents=true",
        "memory.cache_text_embeddings=true",
        "validation.enabled=false",
        "output.checkpoint_every=0",
        f"output.dir={out}",
        "logging.tensorboard=false",
        "logging.log_every=5",
    ]


def run_ours(
    name: str, extra: list[str], model: Path, images: Path, out: Path, steps: int, warmup: int
) -> dict:
    sets = [*our_settings(model, images, out, steps), *extra]
    cmd = [sys.executable, "-m", "flux2_lora.cli", "train"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    wall = round(time.perf_counter() - t0, 1)
    row: dict = {"name": name, "settings": extra, "process_wall_s": wall, "ok": proc.returncode == 0}
    metrics = (
        [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        if (out / "metrics.jsonl").is_file()
        else []
    )
    timed = [m for m in metrics if m["step"] >= warmup]
    if proc.returncode == 0 and len(timed) >= 2:
        first, last = timed[0], timed[-1]
        row["steps_per_s"] = (last["step"] - first["step"]) / (last["time"] - first["time"])
        status = json.loads((out / "status.json").read_text())
        phases = status["extra"]["measured"].get("gpu_phases", {})
        row["train_allocated_gib"] = phases.get("training", {}).get("allocated_gib")
        row["train_reserved_gib"] = phases.get("training", {}).get("reserved_gib")
        row["setup_allocated_gib"] = phases.get("setup", {}).get("allocated_gib")
        row["loss"] = [m["loss"] for m in metrics]
    else:
        row["ok"] = False
        row["stderr_tail"] = proc.stderr[-2000:]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--diffusers-script", type=Path, help="train_dreambooth_lora_flux2_klein.py")
    parser.add_argument("--work", type=Path, default=Path("/tmp/flux2-speed"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of steps/s")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also run ours with these --set values (comma-separated)",
    )
    parser.add_argument("--deadline-s", type=float, default=1e9, help="start no run after this many seconds")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tiny", action="store_true", help="CPU check of the whole path at toy size")
    args = parser.parse_args()
    start = time.perf_counter()
    model, images = args.work / "klein-4b", args.work / "images"
    if not (model / "model_index.json").is_file():
        cmd = [sys.executable, str(HERE / "build_pipeline.py"), "--out", str(model), "--images", str(images)]
        subprocess.run(cmd + (["--tiny"] if args.tiny else []), check=True, cwd=ROOT)
    base: list[tuple[str, list[str] | None]] = [("diffusers", None)] if args.diffusers_script else []
    base.append(("ours", []))
    # Interleaved rounds of the two trainers first (alternating which goes first), then each variant
    # of ours once, in the time that is left.
    schedule = [(r, run) for r in range(args.rounds) for run in (base if r % 2 == 0 else base[::-1])]
    for v in args.variant:
        schedule.append((0, (f"ours {v}", [s.strip() for s in v.split(",") if s.strip()])))
    rows: list[dict] = []
    for r, (name, extra) in schedule:
        if time.perf_counter() - start > args.deadline_s:
            print(f"deadline reached: skipped {name} (round {r + 1})", flush=True)
            continue
        out = args.work / "runs" / f"{name.replace(' ', '_').replace('=', '-').replace(',', '+')}-{r}"
        if extra is None:
            row = run_diffusers(args.diffusers_script, model, images, out, args.steps, args.warmup)
        else:
            row = run_ours(name, extra, model, images, out, args.steps, args.warmup)
        row["round"] = r
        rows.append(row)
        sps = row.get("steps_per_s")
        detail = (
            f"{sps:.3f} steps/s, train peak {row.get('train_allocated_gib') or 0:.2f} GiB, "
            f"process {row.get('process_wall_s')} s"
            if sps
            else f"FAILED {str(row.get('stderr_tail') or row.get('raw'))[-600:]}"
        )
        print(f"round {r + 1} {name:40} {detail}", flush=True)
    summary = summarize(rows)
    device = _device()
    print(f"\n{device}")
    print(f"{'run':42} {'steps/s':>8} {'vs diffusers':>13} {'train alloc GiB':>16} {'reserved GiB':>13}")
    for s in summary:
        ratio = f"{s['ratio']:.2f}x" if s.get("ratio") else "—"
        print(
            f"{s['name']:42} {s['steps_per_s']:8.3f} {ratio:>13} {s['train_allocated_gib']:16.2f} "
            f"{s['train_reserved_gib']:13.2f}"
        )
    if args.out:
        args.out.write_text(json.dumps({"device": device, "summary": summary, "runs": rows}, indent=1))
    return 0


def summarize(rows: list[dict]) -> list[dict]:
    names = list(dict.fromkeys(r["name"] for r in rows))
    out = []
    for name in names:
        ok = [r for r in rows if r["name"] == name and r.get("steps_per_s")]
        if not ok:
            continue
        out.append(
            {
                "name": name,
                "runs": len(ok),
                "steps_per_s": statistics.median(r["steps_per_s"] for r in ok),
                "steps_per_s_all": [round(r["steps_per_s"], 4) for r in ok],
                "train_allocated_gib": max(r.get("train_allocated_gib") or 0 for r in ok),
                "train_reserved_gib": max(r.get("train_reserved_gib") or 0 for r in ok),
            }
        )
    base = next((s for s in out if s["name"] == "diffusers"), None)
    for s in out:
        if base:
            s["ratio"] = s["steps_per_s"] / base["steps_per_s"]
            s["peak_ratio"] = (
                s["train_allocated_gib"] / base["train_allocated_gib"]
                if base["train_allocated_gib"]
                else None
            )
    return out


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    except ImportError:
        pass
    return f"cpu ({os.cpu_count()} cores)"


if __name__ == "__main__":
    raise SystemExit(main())
