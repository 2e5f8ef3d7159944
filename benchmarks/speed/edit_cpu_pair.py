"""Edit (reference-image) LoRA training on the CPU: flux2-lora beside diffusers'
train_dreambooth_lora_flux2_klein_img2img.py, same model folder, same pairs, same settings.

    python benchmarks/speed/edit_cpu_pair.py --script PATH/train_dreambooth_lora_flux2_klein_img2img.py \\
        [--their-python PYTHON] [--rounds 2] [--steps 40] [--warmup 15] [--threads 1] [--work DIR]

diffusers' script is not part of this repository (fetch it from their examples/dreambooth/ and pass its
path); it runs unmodified. It reads condition images only through the ``datasets`` library
(``--dataset_name`` + ``--cond_image_column``), which flux2-lora does not need: ``--their-python`` names an
interpreter that has it (by default this one).

Inputs, built once under --work:
  * model/: a FLUX.2 [klein] pipeline folder saved by diffusers (build_pipeline.py's CPU sizes, with a
    somewhat larger transformer by default, --size), loaded by both trainers.
  * pairs/: the embedded edit demo's single-reference pairs (data/demo_edit.py; diffusers' script takes one
    condition image, so the pairs with a second reference are left out), one metadata.jsonl read by both:
    ``file_name`` (the target), ``text`` (the instruction), ``references`` (ours) and ``cond_file_name``
    (datasets' imagefolder makes it the ``cond`` image column) naming the same file.
Settings on both sides: 128² targets and references, rank 16 = alpha on diffusers' default target layers,
AdamW lr 1e-4 (weight decay 1e-4, grad-norm clip 1.0), constant schedule, batch 1, fp32, no gradient
checkpointing, cached latents and caption embeddings, no validation, no checkpoints, TensorBoard on,
--threads CPU threads (OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads, our
performance.cpu_threads).

Each run is a fresh process, measured by step_probe.py (the same optimizer-step hook on both sides; ours
through the real CLI, ``flux2-lora train``). Rounds alternate which side goes first. s/step: the mean step
time after --warmup steps (caching is before the first step on both sides); median step: the median of
those steps; CPU s/step: the process's CPU time per step (all threads), which other load on a shared
machine disturbs far less than the wall clock. Peak RSS: the child's
ru_maxrss (os.wait4: the whole process, caching included); train RSS: the largest VmRSS seen at a timed
step. The table gives each run and the medians; the last line is one JSON object with the ratios
ours / diffusers (≤ 1.0: ours is as fast / as small).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESOLUTION = 128
RANK = 16
LR = "1e-4"
# Transformer sizes on top of build_pipeline.py's --tiny ones: "small" makes the step's matrix products,
# not Python overhead alone, the cost (hidden 128, 2 double + 4 single blocks); its weights are a few MB,
# so its peak RSS is mostly the libraries each trainer imports.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {
        "num_layers": 2,
        "num_single_layers": 4,
        "num_attention_heads": 4,
        "attention_head_dim": 32,
        "axes_dims_rope": (8, 8, 8, 8),
        "joint_attention_dim": 192,
    },
    # Weights that count in the resident memory (about 33M transformer parameters, 130 MB in fp32).
    "medium": {
        "num_layers": 2,
        "num_single_layers": 6,
        "num_attention_heads": 8,
        "attention_head_dim": 64,
        "axes_dims_rope": (16, 16, 16, 16),
        "joint_attention_dim": 1536,
    },
}


def pair_rows() -> list[dict[str, Any]]:
    """The benchmark's pairs: the edit demo's single-reference ones, as (name, reference, target, text)."""
    from flux2_lora.data.demo_edit import DEMO_EDIT_PAIRS, demo_edit_pair

    rows = []
    for i in range(DEMO_EDIT_PAIRS):
        refs, target, text = demo_edit_pair(i)
        if len(refs) == 1:
            rows.append({"name": f"edit_{i:02d}", "reference": refs[0], "target": target, "text": text})
    return rows


def write_pairs(folder: Path) -> Path:
    """One folder both trainers read (see the module docstring); returns it."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "targets").mkdir(parents=True)
    (folder / "inputs").mkdir()
    lines = []
    for row in pair_rows():
        target, ref = f"targets/{row['name']}.png", f"inputs/{row['name']}_0.png"
        row["target"].save(folder / target)
        row["reference"].save(folder / ref)
        entry = {"file_name": target, "cond_file_name": ref, "references": [ref], "text": row["text"]}
        lines.append(json.dumps(entry))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_inputs(work: Path, size: str) -> tuple[Path, Path]:
    """(model folder, pairs folder) under ``work``; the model is rebuilt when --size changes."""
    sys.path.insert(0, str(HERE))
    from build_pipeline import build

    model = work / f"model-{size}"
    if not (model / "model_index.json").is_file():
        build(model, tiny=True, transformer_overrides=SIZES[size])
    return model, write_pairs(work / "pairs")


def their_args(model: Path, pairs: Path, out: Path, steps: int) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(model),
        "--dataset_name", str(pairs),
        "--image_column", "image",
        "--cond_image_column", "cond",
        "--caption_column", "text",
        "--cache_dir", str(out.parent / "hf-datasets"),
        "--output_dir", str(out),
        "--resolution", str(RESOLUTION),
        "--center_crop",
        "--rank", str(RANK),
        "--lora_alpha", str(RANK),
        "--train_batch_size", "1",
        "--gradient_accumulation_steps", "1",
        "--mixed_precision", "no",
        "--cache_latents",
        "--learning_rate", LR,
        "--adam_weight_decay", "1e-4",
        "--max_grad_norm", "1.0",
        "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0",
        "--max_train_steps", str(steps),
        "--checkpointing_steps", "1000000",
        "--skip_final_inference",
        "--report_to", "tensorboard",
        "--seed", "0",
    ]  # fmt: skip


def our_args(model: Path, pairs: Path, out: Path, steps: int, threads: int) -> list[str]:
    sets = [
        f"model.path={model}",
        "model.variant=klein-4b",
        "model.device=cpu",
        "model.dtype=float32",
        f"dataset.path={pairs}",
        f"dataset.resolution={RESOLUTION}",
        f"dataset.reference_max_pixels={RESOLUTION * RESOLUTION}",
        "dataset.random_flip=false",
        f"lora.rank={RANK}",
        f"lora.alpha={RANK}",
        "lora.target_modules=[default]",
        "training.batch_size=1",
        "training.gradient_accumulation_steps=1",
        "training.optimizer=adamw",
        f"training.learning_rate={LR}",
        "training.weight_decay=1e-4",
        "training.max_grad_norm=1.0",
        "training.lr_scheduler=constant",
        "training.warmup_steps=0",
        f"training.max_steps={steps}",
        "training.seed=0",
        "memory.gradient_checkpointing=false",
        "memory.cache_latents=true",
        "memory.cache_text_embeddings=true",
        f"performance.cpu_threads={threads}",
        "validation.enabled=false",
        "validation.eval_images=0",
        "output.checkpoint_every=0",
        f"output.dir={out}",
        "logging.tensorboard=true",
    ]
    return ["train", *[a for s in sets for a in ("--set", s)]]


def run_probe(
    python: str,
    target: list[str],
    args: list[str],
    warmup: int,
    threads: int,
    work: Path,
    log_path: Path,
    profile_steps: int = 0,
) -> dict[str, Any]:
    """One fresh process through step_probe.py (stderr to ``log_path``); its JSON plus the child's peak
    RSS (os.wait4: that child's own, where getrusage(RUSAGE_CHILDREN) would give the largest so far)."""
    cmd = [python, str(HERE / "step_probe.py"), *target, "--warmup", str(warmup), "--threads", str(threads)]
    cmd += ["--profile-steps", str(profile_steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["HF_HOME"] = str(work / "hf-home")  # datasets' cache of the pairs stays in the work folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*cmd, "--", *args], stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    row: dict[str, Any] = json.loads(lines[-1]) if lines else {"ok": False, "error": "no JSON line"}
    row["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    row["process_wall_s"] = round(time.perf_counter() - t0, 1)
    row["returncode"] = proc.returncode
    if not row.get("ok") or proc.returncode != 0:
        row["ok"] = False
        row["stderr_tail"] = log_path.read_text(errors="replace")[-2000:]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--script", type=Path, required=True, help="train_dreambooth_lora_flux2_klein_img2img.py"
    )
    parser.add_argument("--their-python", default=sys.executable, help="an interpreter with `datasets`")
    parser.add_argument("--work", type=Path, default=Path("/tmp/flux2-edit-cpu-pair"))
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=15, help="steps left out of s/step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the summary and every run here (JSON)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="instead of timing: torch-profile N steps of each side once and compare their operators",
    )
    args = parser.parse_args()
    if not args.script.is_file():
        parser.error(f"--script: {args.script} is not a file")
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup by at least 2")
    args.work.mkdir(parents=True, exist_ok=True)
    model, pairs = build_inputs(args.work, args.size)
    sides = {
        "ours": lambda out: (
            sys.executable,
            ["--module", "flux2_lora.cli"],
            our_args(model, pairs, out, args.steps, args.threads),
        ),
        "diffusers": lambda out: (
            args.their_python,
            ["--script", str(args.script)],
            their_args(model, pairs, out, args.steps),
        ),
    }
    order = ["ours", "diffusers"]
    if args.profile:
        ops = {}
        for name in order:
            out = args.work / "runs" / f"{name}-profile"
            if out.exists():
                shutil.rmtree(out)
            python, target, side_args = sides[name](out)
            log = args.work / f"{name}-profile.log"
            row = run_probe(
                python, target, side_args, args.warmup, args.threads, args.work, log, args.profile
            )
            if not row.get("ok") or not row.get("ops"):
                print(f"{name} FAILED: {str(row.get('stderr_tail'))[-800:]}")
                return 1
            ops[name] = row["ops"]
        print(op_comparison(ops["ours"], ops["diffusers"]))
        return 0
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            out = args.work / "runs" / f"{name}-{r}"
            if out.exists():
                shutil.rmtree(out)
            python, target, side_args = sides[name](out)
            log = args.work / f"{name}-{r}.log"
            row = run_probe(python, target, side_args, args.warmup, args.threads, args.work, log)
            row.update(name=name, round=r)
            rows.append(row)
            print(_row_line(row), flush=True)
    summary = summarize(rows)
    summary["setup"] = setup_facts(args)
    print()
    print(_table(summary, args))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "runs": rows}, indent=1))
    print(json.dumps(summary))
    return 0 if summary.get("ok") else 1


def setup_facts(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured on: the script's digest names the exact version of it that ran."""
    import hashlib
    from importlib.metadata import version

    return {
        "script": args.script.name,
        "script_sha256": hashlib.sha256(args.script.read_bytes()).hexdigest(),
        "diffusers": version("diffusers"),
        "torch": version("torch"),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "threads": args.threads,
        "size": args.size,
        "resolution": RESOLUTION,
        "rank": RANK,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
    }


def op_comparison(ours: dict[str, Any], theirs: dict[str, Any], top: int = 20) -> str:
    """Operators per step, ours beside diffusers', the largest differences in self CPU time first."""
    names = sorted(
        set(ours) | set(theirs),
        key=lambda k: (
            -abs(ours.get(k, {}).get("self_cpu_ms", 0.0) - theirs.get(k, {}).get("self_cpu_ms", 0.0))
        ),
    )
    lines = [
        f"{'operator (per step)':44} {'calls ours':>10} {'diffusers':>10} {'ms ours':>9} {'diffusers':>10}"
    ]
    for k in names[:top]:
        o, d = ours.get(k, {}), theirs.get(k, {})
        lines.append(
            f"{k[:44]:44} {o.get('calls', 0):10.1f} {d.get('calls', 0):10.1f} "
            f"{o.get('self_cpu_ms', 0):9.2f} {d.get('self_cpu_ms', 0):10.2f}"
        )
    total_o = sum(v["self_cpu_ms"] for v in ours.values())
    total_d = sum(v["self_cpu_ms"] for v in theirs.values())
    calls_o = sum(v["calls"] for v in ours.values())
    calls_d = sum(v["calls"] for v in theirs.values())
    lines.append(f"{'all operators':44} {calls_o:10.1f} {calls_d:10.1f} {total_o:9.2f} {total_d:10.2f}")
    return "\n".join(lines)


def _row_line(row: dict[str, Any]) -> str:
    if not row.get("ok"):
        return f"round {row['round'] + 1} {row['name']:10} FAILED: {str(row.get('stderr_tail'))[-800:]}"
    return (
        f"round {row['round'] + 1} {row['name']:10} {row['s_per_step']:.4f} s/step "
        f"({row['cpu_s_per_step']:.4f} CPU s), peak RSS "
        f"{row['peak_rss_mib']:.0f} MiB, train RSS {row['train_rss_mib']:.0f} MiB, "
        f"{row['lora']['trainable_params']} LoRA params, process {row['process_wall_s']} s"
    )


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per side and the ratios ours / diffusers."""
    sides: dict[str, Any] = {}
    for name in ("ours", "diffusers"):
        ok = [r for r in rows if r["name"] == name and r.get("ok")]
        if ok:
            sides[name] = {
                "runs": len(ok),
                "s_per_step": statistics.median(r["s_per_step"] for r in ok),
                "s_per_step_all": [round(r["s_per_step"], 5) for r in ok],
                "median_step_s": statistics.median(r["median_step_s"] for r in ok),
                "cpu_s_per_step": statistics.median(r["cpu_s_per_step"] for r in ok),
                "cpu_s_per_step_all": [round(r["cpu_s_per_step"], 5) for r in ok],
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in ok),
                "peak_rss_mib_all": [round(r["peak_rss_mib"], 1) for r in ok],
                "train_rss_mib": statistics.median(r["train_rss_mib"] for r in ok),
                "lora_params": ok[0]["lora"]["trainable_params"],
                "threads": ok[0]["threads"],
            }
    out: dict[str, Any] = {"sides": sides, "ok": len(sides) == 2 and all(r.get("ok") for r in rows)}
    if len(sides) == 2:
        o, d = sides["ours"], sides["diffusers"]
        out["s_per_step_ratio"] = o["s_per_step"] / d["s_per_step"]
        out["median_step_ratio"] = o["median_step_s"] / d["median_step_s"]
        out["cpu_s_per_step_ratio"] = o["cpu_s_per_step"] / d["cpu_s_per_step"]
        out["peak_rss_ratio"] = o["peak_rss_mib"] / d["peak_rss_mib"]
        out["train_rss_ratio"] = o["train_rss_mib"] / d["train_rss_mib"]
        out["same_lora_params"] = o["lora_params"] == d["lora_params"]
    return out


def _table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"cpu ({os.cpu_count()} cores), {args.threads} thread(s), size {args.size}, {RESOLUTION}² pairs, "
        f"{args.steps} steps (first {args.warmup} left out), medians of {args.rounds} round(s)",
        f"{'side':10} {'s/step':>8} {'median step s':>14} {'CPU s/step':>11} {'peak RSS MiB':>13} "
        f"{'train RSS MiB':>14} {'LoRA params':>12}",
    ]
    for name, s in summary["sides"].items():
        lines.append(
            f"{name:10} {s['s_per_step']:8.4f} {s['median_step_s']:14.4f} {s['cpu_s_per_step']:11.4f} "
            f"{s['peak_rss_mib']:13.0f} {s['train_rss_mib']:14.0f} {s['lora_params']:12d}"
        )
    if "s_per_step_ratio" in summary:
        lines.append(
            f"ours/diffusers: s/step {summary['s_per_step_ratio']:.3f} (median step "
            f"{summary['median_step_ratio']:.3f}, CPU s/step {summary['cpu_s_per_step_ratio']:.3f}), peak RSS "
            f"{summary['peak_rss_ratio']:.3f}, train RSS {summary['train_rss_ratio']:.3f} (goal: ≤ 1.0)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
