"""Host RAM (peak RSS of the trainer process) per phase, against this machine's RAM (pure, psutil only).

On a CPU run everything lives in host RAM. Loading holds the transformer's bytes several times over
at its peak (file read, parameters, the PEFT wrap), and the C allocator keeps that memory for reuse,
so the peak is the larger of the loading phase and the training phase, not their sum. The constants
below were measured on CPU runs of the demo and of larger demo-architecture models
(benchmarks/host_ram.py); GPU-run figures (text encoder loaded in host RAM, then moved) are modelled
the same way but not yet measured on a GPU machine.
"""

from __future__ import annotations

import functools
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
    total = _total_gib()
    return total if gpu_is_local and total else ASSUMED_HOST_GIB


def _machine() -> tuple[float | None, float | None]:
    """(total, available) GiB of this machine's RAM; the total is read once (reading /proc/meminfo costs
    about a millisecond, a tenth of a whole report's budget), what is available each time."""
    total = _total_gib()
    if total is None:
        return None, None
    import psutil

    return total, psutil.virtual_memory().available / GIB


@functools.lru_cache(maxsize=1)
def _total_gib() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.virtual_memory().total) / GIB


def host_estimate(config: TrainConfig, *, on_gpu: bool) -> dict[str, Any]:
    sh = resolve_shapes(config)
    linear, norms = transformer_params(sh.arch)
    est = estimate(config)
    te = sh.text_encoder.params
    ema_gib = 4.0 * est.trainable_params / GIB if config.training.ema_decay > 0 else 0.0  # fp32 copy
    ram_cache = ram_cache_gib(config)
    wb = 4 if config.model.dtype in ("auto", "float32") else 2
    weights = (linear + norms) * wb / GIB
    small = (te + sh.vae.params) * wb / GIB
    if not on_gpu:
        loading = PROCESS_BASELINE_GIB + LOAD_FACTOR * weights + small
        scale = wb / (2 if sh.weight_bytes == 2 else 4)  # the GPU model assumed bf16 for 'auto'
        c = est.phase_components["training"]
        training = (
            PROCESS_BASELINE_GIB
            + TRAIN_WEIGHT_FACTOR * weights
            + small
            + (c["activations"] * scale + c["lora"] + c["gradients"] + c["optimizer"])
            + ema_gib  # on a CPU run the EMA is in host RAM wherever training.ema_device puts it
            + ram_cache
        )
        phases = {"loading": loading, "caching": PROCESS_BASELINE_GIB + small * 2, "training": training}
    else:
        phases, others = _gpu_run(config, est.swap, _host_ema_gib(config, est.trainable_params))
    peak = max(phases.values())
    total, available = _machine()
    # Under DDP every process of a machine loads the whole transformer; under FSDP only rank 0 does (the
    # others build it on the meta device and receive their shards). With cached embeddings the text
    # encoder is loaded by rank 0 alone (it encodes every caption once and broadcasts them).
    processes = config.distributed.num_processes
    other = max(others.values()) if on_gpu else _cpu_other(config, phases, weights, te * wb / GIB, ema_gib)
    machine = peak + (processes - 1) * other
    return {
        "phases": phases,
        "peak_gib": peak,
        "processes": processes,
        "machine_peak_gib": machine,
        "ram_cache_gib": ram_cache,  # cached latents and embeddings in each process's RAM
        "total_gib": total,
        "available_gib": available,
        "verdict": verdict(machine, available) if available else None,
        "tight_headroom": TIGHT_HEADROOM,
    }


def _cpu_other(
    config: TrainConfig, phases: dict[str, float], weights: float, te_gib: float, ema: float
) -> float:
    """The peak of a CPU run's process other than rank 0: no EMA (rank 0's), no text encoder when the
    embeddings are cached (rank 0 encodes them for all); under FSDP it reads no weights (its loading is
    the bare process) and holds only its shard of them while training."""
    d = config.distributed
    te = te_gib if config.memory.cache_text_embeddings else 0.0
    loading = phases["loading"] - te
    training = phases["training"] - te - ema
    if d.sharded:
        loading = phases["loading"] - LOAD_FACTOR * weights - te
        training -= TRAIN_WEIGHT_FACTOR * weights * (1 - 1 / d.world_size)
    return max(loading, phases["caching"] - te, training)


def _gpu_run(
    config: TrainConfig, swap: dict[str, float] | None, ema_gib: float = 0.0
) -> tuple[dict[str, float], dict[str, float]]:
    """Host RAM phases of a GPU run: rank 0's, and those of the other processes (no EMA: ``ema_gib`` is
    the host copy of the adapter's EMA, held by rank 0 only; no text encoder when the embeddings are
    cached, as rank 0 encodes them for all; under FSDP no transformer read, only their shards)."""
    sh = resolve_shapes(config)
    linear, norms = transformer_params(sh.arch)
    mem, wb = config.memory, sh.weight_bytes
    d = config.distributed
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
    # Training: pinned batches, CUDA host allocations; the swapped blocks' pinned copy; the cached latents
    # and embeddings (every process holds them all, unless memory.cache_to_disk reads them per step).
    cache = ram_cache_gib(config)
    training = base + 0.5 + pinned + cache
    phases = {
        "loading": base + max(GPU_LOAD_FACTOR * te_gib, transformer),
        "caching": base + caching,
        "training": training + ema_gib,
    }
    # The other processes: without cached embeddings each encodes its own captions at every step, so
    # each loads the encoder too.
    te_other = 0.0 if mem.cache_text_embeddings else te_gib
    other_transformer = transformer
    if d.sharded:
        # Their shards only: on the GPU, or pinned in host RAM with FSDP's CPU offload; what arrives
        # from rank 0 comes one tensor at a time.
        other_transformer = (linear + norms) * wb / GIB / d.world_size if d.fsdp_cpu_offload else 0.0
    others = {
        "loading": base + max(GPU_LOAD_FACTOR * te_other, other_transformer),
        "caching": base + (te_other * GPU_LOAD_FACTOR if mem.cpu_offload else 0.0),
        "training": training + (other_transformer if d.sharded else 0.0),
    }
    return phases, others


def ram_cache_gib(config: TrainConfig) -> float:
    """The cached latents and prompt embeddings held in RAM by each training process (0 with
    memory.cache_to_disk: they are read from ``<run>/.cache`` per step). Every dataset of the run counts
    (dataset.path and each dataset.extra entry, at its own resolution); a folder that is not here to count
    adds nothing. One caption per image (eight with dataset.shuffle_tags), both flips with
    dataset.random_flip; folder repeats share their image's cache entries."""
    from flux2_lora.data.entries import dataset_parts

    mem = config.memory
    if mem.cache_to_disk or not (mem.cache_latents or mem.cache_text_embeddings):
        return 0.0
    sh = resolve_shapes(config)
    wb = 4 if config.model.dtype == "float32" else 2
    total = 0.0
    # Without extra entries, the primary section itself (dataset_parts copies each section: this runs in
    # every re-estimate of the recommendations).
    parts = [p.settings for p in dataset_parts(config.dataset)] if config.dataset.extra else [config.dataset]
    for ds in parts:
        images = _dataset_images(ds.path)
        if mem.cache_latents:
            cells = (ds.resolution // sh.vae.spatial_factor) ** 2
            total += images * (2 if ds.random_flip else 1) * sh.vae.latent_channels * cells * wb
        if mem.cache_text_embeddings:
            captions = images * (8 if ds.shuffle_tags else 1)
            total += captions * sh.text_tokens * sh.arch.joint_attention_dim * wb
    return total / GIB


def _dataset_images(path: str) -> int:
    import os

    folder = os.path.expanduser(path.strip()) if path.strip() else ""
    if not folder or not os.path.isdir(folder):
        return 0
    return _count_images(folder, os.stat(folder).st_mtime)


@functools.lru_cache(maxsize=16)
def _count_images(folder: str, _mtime: float) -> int:
    from pathlib import Path

    from flux2_lora.data.scan import walk_images

    try:
        return len(walk_images(Path(folder)))
    except OSError:
        return 0


def _host_ema_gib(config: TrainConfig, trainable_params: int) -> float:
    """The adapter's fp32 EMA copy in host RAM of a GPU run (training.ema_device cpu)."""
    t = config.training
    return 4.0 * trainable_params / GIB if t.ema_decay > 0 and t.ema_device == "cpu" else 0.0


def gpu_host_peak(config: TrainConfig, est: Any) -> float:
    """The machine's host RAM peak of a GPU run with estimate ``est`` (no psutil: for the recommendations'
    re-estimates)."""
    phases, others = _gpu_run(config, est.swap, _host_ema_gib(config, est.trainable_params))
    return max(phases.values()) + (config.distributed.num_processes - 1) * max(others.values())
