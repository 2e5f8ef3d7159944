"""GPU memory harness: real training steps at full size with random weights, measured vs estimated.

    python benchmarks/vram/run.py                   # CUDA: every config, each in its own process
    python benchmarks/vram/run.py --only 3 --only 7 # a subset
    python benchmarks/vram/run.py --gpu-gib 24      # cap this process at 24 GiB (torch's memory
                                                    # fraction) to check a verdict's edge: OOM or not
    python benchmarks/vram/run.py --dry             # no GPU: see below

On CUDA each config runs in a fresh process (a clean allocator and context) and steps the trainer's own
code: ``Flux2Transformer2DModel`` from the variant's config, NF4 (bitsandbytes) or int8 (the trainer's
torchao call), ``model.inject_lora``, gradient checkpointing, ``optim.build_optimizer``,
``flow.flow_matching_loss`` under bf16 autocast, gradient clipping, optimizer step. Weights are random:
memory does not depend on their values. Each row of ``benchmarks/vram/measured.json`` has the device,
the config, the measured peaks (max_memory_allocated, max_memory_reserved, the process's NVML memory,
the CUDA context), the estimate (training phase: tensor peak, and with context and allocator reserve)
and the errors of the estimate against max_memory_allocated and NVML.

``--dry`` runs anywhere: each config's training step is traced on meta tensors at full size (the tensor
peak max_memory_allocated would show), and the same build/quantize/LoRA/step code really runs on CPU
at the embedded demo's size (a check that the code path works, with its tracked tensor peak against
the estimate for that size). It writes ``measured.dry.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # tests.memory.matrix: the hub ids and config helper

from measure import run_steps  # noqa: E402
from tests.memory.matrix import config as make_config  # noqa: E402

# variant, overrides: klein-4b, klein-9b and dev (NF4, or bf16 where it fits 80 GB), 512–1536 px,
# ranks 8–128, checkpointing on and off, batch 1–4, five optimizers, DoRA and int8 once each.
CONFIGS: list[tuple[str, list[str]]] = [
    ("klein-4b", ["dataset.resolution=512", "lora.rank=8", "training.batch_size=1"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.rank=16"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.rank=64", "memory.gradient_checkpointing=false"]),
    ("klein-4b", ["dataset.resolution=1536", "lora.rank=32", "training.batch_size=2"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.rank=128", "training.optimizer=adafactor"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.rank=32", "lora.use_dora=true"]),
    # A large rank on every linear layer: the end of backward (every gradient) is the peak.
    ("klein-4b", ["dataset.resolution=512", "lora.rank=128", "lora.target_modules=[all-linear]"]),
    ("klein-9b", ["dataset.resolution=512", "lora.rank=16", "training.batch_size=4"]),
    ("klein-9b", ["dataset.resolution=1024", "lora.rank=32"]),
    ("klein-9b", ["dataset.resolution=1024", "lora.rank=16", "training.optimizer=adamw8bit"]),
    ("klein-9b", ["dataset.resolution=1024", "lora.rank=16", "memory.quantization=nf4"]),
    ("klein-9b", ["dataset.resolution=1024", "lora.rank=16", "memory.quantization=int8"]),
    ("klein-9b", ["dataset.resolution=768", "lora.rank=64", "memory.gradient_checkpointing=false"]),
    ("dev", ["dataset.resolution=1024", "lora.rank=16", "memory.quantization=nf4"]),
    ("dev", ["dataset.resolution=512", "lora.rank=32", "memory.quantization=nf4", "training.batch_size=2"]),
    ("dev", ["dataset.resolution=1024", "lora.rank=16"]),
    ("dev", ["dataset.resolution=1536", "lora.rank=8", "memory.quantization=nf4", "training.optimizer=sgd"]),
    (
        "dev",
        [
            "dataset.resolution=1024",
            "lora.rank=64",
            "memory.quantization=nf4",
            "training.optimizer=prodigy",
            "training.learning_rate=1.0",
        ],
    ),
]


def config_for(variant: str, overrides: list[str]) -> Any:
    return make_config(*overrides, variant=variant)


def _estimated(config: Any) -> dict[str, float]:
    from flux2_lora.memory import estimate
    from flux2_lora.memory.estimate import CUDA_CONTEXT_GIB, allocator_slack

    est = estimate(config)
    training = est.phases["training"]
    return {
        "training_allocated_gib": training,
        # The harness runs training steps only: the training phase plus context and allocator reserve.
        "training_total_gib": training * (1 + allocator_slack(config)) + CUDA_CONTEXT_GIB,
        "allocated_peak_gib": est.allocated_peak_gib,
        "total_gib": est.total_gib,
    }


def measure_one(index: int, gpu_gib: float | None) -> dict[str, Any]:
    """Run one config on CUDA in this process."""
    import torch

    variant, overrides = CONFIGS[index]
    config = config_for(variant, overrides)
    from flux2_lora.memory.estimate import resolve_shapes

    if gpu_gib is not None:
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_gib / total))
    est = _estimated(config)
    row: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "variant": variant,
        "config": overrides,
        "gpu_gib_cap": gpu_gib,
        "estimated": est,
    }
    try:
        measured = run_steps(config, resolve_shapes(config).arch, "cuda")
        row["measured"] = measured
        row["oom"] = False
        row["error"] = {
            "allocated": (est["training_allocated_gib"] - measured["allocated_gib"])
            / measured["allocated_gib"],
            "nvml": (est["training_total_gib"] - measured["nvml_gib"]) / measured["nvml_gib"]
            if measured.get("nvml_gib")
            else None,
        }
    except torch.cuda.OutOfMemoryError as e:
        row.update(measured=None, oom=True, error=None, message=str(e).splitlines()[0])
    return row


def dry_one(index: int) -> dict[str, Any]:
    """Trace the config at full size on meta tensors, and run its code path at demo size on the CPU."""
    from flux2_lora.memory import estimate
    from flux2_lora.training.trace import StorageTracker, trace_training_step

    variant, overrides = CONFIGS[index]
    config = config_for(variant, overrides)
    est = _estimated(config)
    t0 = time.perf_counter()
    traced = trace_training_step(config)["peak_gib"]
    trace_seconds = time.perf_counter() - t0
    # The same build / quantize / LoRA / step code with real tensors at the demo's size. bitsandbytes'
    # 8-bit AdamW has no CPU kernels: AdamW stands in for it there.
    demo = [o for o in overrides if not o.startswith("dataset.resolution")]
    demo = [o.replace("adamw8bit", "adamw") for o in demo] + ["model.path=demo", "dataset.resolution=128"]
    demo_config = config_for(variant, demo)
    tracker = StorageTracker()
    with tracker:
        real = run_steps(demo_config, demo_config_arch(demo_config), "cpu", steps=2, tracker=tracker)
    demo_est = estimate(demo_config).phases["training"]
    return {
        "device": "cpu (dry: meta-tensor trace at full size; real CPU run at demo size)",
        "variant": variant,
        "config": overrides,
        "measured": {"traced_allocated_gib": traced, "trace_seconds": trace_seconds, "demo_cpu": real},
        "estimated": {**est, "demo_training_allocated_gib": demo_est},
        "error": {
            "allocated": (est["training_allocated_gib"] - traced) / traced,
            "demo_allocated": (demo_est - real["allocated_gib"]) / real["allocated_gib"],
        },
    }


def demo_config_arch(config: Any) -> Any:
    from flux2_lora.memory.estimate import resolve_shapes

    return resolve_shapes(config).arch


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry", action="store_true", help="no GPU: full-size trace + demo-size CPU run")
    parser.add_argument("--only", type=int, action="append", help="config index (repeatable)")
    parser.add_argument(
        "--gpu-gib", type=float, help="cap this process's GPU memory (emulates a smaller card)"
    )
    parser.add_argument(
        "--parallel-gib",
        type=float,
        default=0.0,
        help="run configs side by side while their estimated totals fit in this many GiB (allocated and "
        "reserved peaks are per process; only NVML readings then need each process's own entry)",
    )
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per config")
    parser.add_argument("--deadline-s", type=float, default=1e9, help="start no config after this")
    parser.add_argument(
        "--out", type=Path, help="output JSON (default: measured.json / measured.dry.json here)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--context-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.context_probe:
        print(json.dumps(context_probe()), flush=True)
        return 0
    indices = args.only if args.only else list(range(len(CONFIGS)))
    if args.child:  # one CUDA config in this process, its row as JSON on the last line
        print(json.dumps(measure_one(indices[0], args.gpu_gib)), flush=True)
        return 0
    out = args.out or HERE / ("measured.dry.json" if args.dry else "measured.json")
    if args.dry:
        rows = []
        for i in indices:
            rows.append({**dry_one(i), "index": i})
            _print_row(rows[-1])
        out.write_text(json.dumps(rows, indent=1))
        print(f"wrote {out}")
        return 0
    context = _run_child(["--context-probe"], 120)
    rows = _schedule(indices, args, out, context)
    _print_summary(rows, context)
    print(f"wrote {out}")
    return 0


def context_probe() -> dict[str, Any]:
    """NVML memory of a fresh process's CUDA context and cuBLAS handle (nothing else allocated)."""
    import torch
    from measure import NvmlMeter

    meter = NvmlMeter()
    x = torch.ones(256, 256, device="cuda")
    (x @ x).sum().item()  # context, cuBLAS handle and workspace
    torch.cuda.synchronize()
    used = meter.now_mib() - torch.cuda.memory_reserved() / 2**20
    return {"context_gib": used / 1024, "source": meter.source, "device": torch.cuda.get_device_name(0)}


def _save(rows: list[dict[str, Any]], out: Path, context: dict[str, Any] | None) -> None:
    for row in rows:
        row["context_probe"] = context
    out.write_text(json.dumps(sorted(rows, key=lambda r: r["index"]), indent=1))


def _schedule(
    indices: list[int], args: argparse.Namespace, out: Path, context: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Run the configs, several at once while their estimated totals fit in --parallel-gib; the JSON
    is rewritten after each one, so a run cut short keeps what it measured."""
    pending = sorted(indices, key=lambda i: -_estimated(config_for(*CONFIGS[i]))["total_gib"])
    running: dict[int, tuple[subprocess.Popen[str], float, float, Any]] = {}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    budget = args.parallel_gib
    while pending or running:
        used = sum(g for _, _, g, _ in running.values())
        while pending and time.perf_counter() - start < args.deadline_s:
            i = next((j for j in pending if not running or used + _gib_of(j) <= budget), None)
            if i is None:
                break
            pending.remove(i)
            running[i] = (*_spawn(i, args.gpu_gib), _gib_of(i), time.perf_counter())  # type: ignore[assignment]
            used += _gib_of(i)
        if pending and time.perf_counter() - start >= args.deadline_s and not running:
            for i in pending:
                rows.append(
                    {"index": i, "variant": CONFIGS[i][0], "config": CONFIGS[i][1], "skipped": "deadline"}
                )
            pending = []
        for i, (proc, log, _, t0) in list(running.items()):
            if proc.poll() is None and time.perf_counter() - t0 < args.timeout_s:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            row = _collect(i, proc, log)
            row["index"], row["concurrent"] = i, len(running) > 1 or bool(pending)
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            del running[i]
            _print_row(row)
            _save(rows, out, context)
        time.sleep(0.5)
    return rows


def _gib_of(index: int) -> float:
    return float(_estimated(config_for(*CONFIGS[index]))["total_gib"]) + 1.0


def _spawn(index: int, gpu_gib: float | None) -> tuple[subprocess.Popen[str], Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--only", str(index)]
    if gpu_gib is not None:
        cmd += ["--gpu-gib", str(gpu_gib)]
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by _collect once the child ends)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ})
    return proc, log


def _collect(index: int, proc: subprocess.Popen[str], log: Any) -> dict[str, Any]:
    stdout = proc.stdout.read() if proc.stdout else ""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        log.close()
        return dict(json.loads(lines[-1]))
    log.seek(0)
    variant, overrides = CONFIGS[index]
    return {
        "variant": variant,
        "config": overrides,
        "measured": None,
        "error": None,
        "failed": log.read()[-2000:],
    }


def _run_child(extra: list[str], timeout: float) -> dict[str, Any] | None:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1])) if lines else {"failed": proc.stderr[-1000:]}


def _print_row(row: dict[str, Any]) -> None:
    err = row.get("error") or {}
    state = (
        "OOM"
        if row.get("oom")
        else "FAILED " + row["failed"].strip().splitlines()[-1][:120]
        if row.get("failed")
        else "skipped"
        if row.get("skipped")
        else " ".join(f"{k} {v:+.1%}" for k, v in err.items() if v is not None)
    )
    print(f"[{row.get('index', '?'):>2}] {row['variant']:8} {' '.join(row['config']):70} {state}", flush=True)


def _print_summary(rows: list[dict[str, Any]], context: dict[str, Any] | None) -> None:
    ok = [r for r in rows if r.get("measured")]
    if not ok:
        return
    print(f"\n{ok[0]['device']}; CUDA context (probe): {context}")
    print(
        f"{'#':>2} {'variant':8} {'est GiB':>8} {'alloc GiB':>9} {'err':>7} {'reserved':>9} {'res/alloc':>9}"
    )
    for r in ok:
        m, e = r["measured"], r["estimated"]
        print(
            f"{r['index']:2} {r['variant']:8} {e['training_allocated_gib']:8.2f} {m['allocated_gib']:9.2f} "
            f"{r['error']['allocated']:+7.1%} {m['reserved_gib']:9.2f} {m['reserved_gib'] / m['allocated_gib']:9.3f}"
        )
    worst = max(ok, key=lambda r: abs(r["error"]["allocated"]))
    print(f"worst allocated error: {worst['error']['allocated']:+.1%} (config {worst['index']})")


if __name__ == "__main__":
    sys.exit(main())
