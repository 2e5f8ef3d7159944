"""Host RAM (peak RSS of the trainer process) per phase, against this machine's RAM (pure, psutil only).

On a CPU run everything lives in host RAM. Loading holds the transformer's bytes several times over
at its peak (file read, parameters, the PEFT wrap), and the C allocator keeps that memory for reuse,
so the peak is the larger of the loading phase and the training phase, not their sum. The constants
below were measured on CPU runs of the demo and of larger demo-architecture models
(benchmarks/host_ram.py); GPU-run figures (text encoder loaded in host RAM, then moved) are modelled
the same way but not yet measured on a GPU machine.
"""

from __future__ import annotations

from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.memory.estimate import GIB, estimate, resolve_shapes
from flux2_lora.memory.gpus import TIGHT_HEADROOM, verdict
from flux2_lora.memory.static import transformer_params

PROCESS_BASELINE_GIB = 0.50  # interpreter + torch + diffusers + transformers + peft + accelerate, running
LOAD_FACTOR = 3.78  # peak RSS while loading, per byte of the transformer in its CPU dtype
TRAIN_WEIGHT_FACTOR = 2.45  # RSS per weight byte that stays while training on the CPU
GPU_LOAD_FACTOR = 1.5  # a component read into host RAM before it moves to the GPU (file pages + tensors)


def _machine() -> tuple[float | None, float | None]:
    try:
        import psutil
    except ImportError:
        return None, None
    vm = psutil.virtual_memory()
    return vm.total / GIB, vm.available / GIB


def host_estimate(config: TrainConfig, *, on_gpu: bool) -> dict[str, Any]:
    sh = resolve_shapes(config)
    linear, norms = transformer_params(sh.arch)
    est = estimate(config)
    te = sh.text_encoder.params
    ema_gib = 4.0 * est.trainable_params / GIB if config.training.ema_decay > 0 else 0.0
    if not on_gpu:
        wb = 4 if config.model.dtype in ("auto", "float32") else 2
        weights = (linear + norms) * wb / GIB
        small = (te + sh.vae.params) * wb / GIB
        loading = PROCESS_BASELINE_GIB + LOAD_FACTOR * weights + small
        scale = wb / (2 if sh.weight_bytes == 2 else 4)  # the GPU model assumed bf16 for 'auto'
        c = est.phase_components["training"]
        training = (
            PROCESS_BASELINE_GIB
            + TRAIN_WEIGHT_FACTOR * weights
            + small
            + (c["activations"] * scale + c["lora"] + c["gradients"] + c["optimizer"])
            + ema_gib  # on a CPU run the EMA is in host RAM wherever training.ema_device puts it
        )
        phases = {"loading": loading, "caching": PROCESS_BASELINE_GIB + small * 2, "training": training}
    else:
        wb = sh.weight_bytes
        te_gib = te * wb / GIB
        tr_gib = (linear + norms) * wb / GIB
        phases = {
            "loading": PROCESS_BASELINE_GIB + GPU_LOAD_FACTOR * max(te_gib, tr_gib),
            # cpu_offload keeps the text encoder in host RAM while it encodes.
            "caching": PROCESS_BASELINE_GIB
            + (te_gib * GPU_LOAD_FACTOR if config.memory.cpu_offload else 0.0),
            "training": PROCESS_BASELINE_GIB
            + 0.5  # cached embeddings, pinned batches, CUDA host allocations
            + (ema_gib if config.training.ema_device == "cpu" else 0.0),
        }
    peak = max(phases.values())
    total, available = _machine()
    # Every training process of a machine loads the whole transformer into its own RAM first (FSDP too:
    # it shards after loading), so the machine needs the peak once per process.
    processes = config.distributed.num_processes
    return {
        "phases": phases,
        "peak_gib": peak,
        "processes": processes,
        "machine_peak_gib": peak * processes,
        "total_gib": total,
        "available_gib": available,
        "verdict": verdict(peak * processes, available) if available else None,
        "tight_headroom": TIGHT_HEADROOM,
    }
