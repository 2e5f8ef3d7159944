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
from flux2_lora.memory.encoders import text_encoder_weight_bytes
from flux2_lora.memory.estimate import GIB, estimate, resolve_shapes
from flux2_lora.memory.gpus import TIGHT_HEADROOM, verdict
from flux2_lora.memory.static import block_bytes, transformer_params

PROCESS_BASELINE_GIB = 0.50  # interpreter + torch + diffusers + transformers + peft + accelerate, running
LOAD_FACTOR = 3.78  # peak RSS while loading, per byte of the transformer in its CPU dtype
TRAIN_WEIGHT_FACTOR = 2.45  # RSS per weight byte that stays while training on the CPU
GPU_LOAD_FACTOR = 1.5  # a component read into host RAM before it moves to the GPU (file pages + tensors)
# The host RAM the fixes for a GPU class must fit when the machine is not this one: a typical workstation
# with one 16-48 GB card (``--host-ram`` / the report's ``host_gib`` change it).
ASSUMED_HOST_GIB = 64.0


def host_budget(gpu_is_local: bool) -> float:
    """This machine's RAM when the verdict is about its own GPU, else :data:`ASSUMED_HOST_GIB`."""
    total, _ = _machine()
    return total if gpu_is_local and total else ASSUMED_HOST_GIB


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
        )
        phases = {"loading": loading, "caching": PROCESS_BASELINE_GIB + small * 2, "training": training}
    else:
        phases, others = _gpu_run(config, est.swap)
    peak = max(phases.values())
    total, available = _machine()
    # Every training process of a machine loads the whole transformer into its own RAM first (FSDP too:
    # it shards after loading); the text encoder only on rank 0 (it encodes once and broadcasts the
    # embeddings), so the other processes of the machine need the peak without it.
    processes = config.distributed.num_processes
    other = max(others.values()) if on_gpu else peak
    machine = peak + (processes - 1) * other
    return {
        "phases": phases,
        "peak_gib": peak,
        "processes": processes,
        "machine_peak_gib": machine,
        "total_gib": total,
        "available_gib": available,
        "verdict": verdict(machine, available) if available else None,
        "tight_headroom": TIGHT_HEADROOM,
    }


def _gpu_run(config: TrainConfig, swap: dict[str, float] | None) -> tuple[dict[str, float], dict[str, float]]:
    """Host RAM phases of a GPU run: rank 0's, and those of the other processes (no text encoder)."""
    sh = resolve_shapes(config)
    linear, norms = transformer_params(sh.arch)
    mem, wb = config.memory, sh.weight_bytes
    te_gib = text_encoder_weight_bytes(sh.text_encoder, wb, mem.text_encoder_quantization) / GIB
    pinned = swap["pinned_gib"] if swap else 0.0
    if mem.blocks_to_swap or mem.quantization == "fp8":
        # The swap and fp8 loaders stream the weights block by block from the safetensors files into their
        # final place (pinned buffers or the GPU, converted there): one bf16 block in flight, no full copy.
        transformer = pinned + GPU_LOAD_FACTOR * max(block_bytes(sh.arch, wb, "none")) / GIB
    else:
        transformer = GPU_LOAD_FACTOR * (linear + norms) * wb / GIB
    # cpu_offload keeps the text encoder in host RAM while it encodes.
    caching = te_gib * GPU_LOAD_FACTOR if mem.cpu_offload else 0.0
    base = PROCESS_BASELINE_GIB
    # Training: cached embeddings, pinned batches, CUDA host allocations; the swapped blocks' pinned copy.
    training = base + 0.5 + pinned
    phases = {
        "loading": base + max(GPU_LOAD_FACTOR * te_gib, transformer),
        "caching": base + caching,
        "training": training,
    }
    others = {"loading": base + transformer, "caching": base, "training": training}
    return phases, others


def gpu_host_peak(config: TrainConfig, est: Any) -> float:
    """The machine's host RAM peak of a GPU run with estimate ``est`` (no psutil: for the recommendations'
    re-estimates)."""
    phases, others = _gpu_run(config, est.swap)
    return max(phases.values()) + (config.distributed.num_processes - 1) * max(others.values())
