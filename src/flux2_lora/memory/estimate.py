"""GPU memory of a training run, from the architecture and the config (pure Python, no torch).

The run goes through three phases, in the trainer's order (trainer.py): caching (text encoder and VAE
on the GPU, encoding captions and images, before the transformer is loaded), training steps, and
validation sampling between steps. Each phase's tensor memory is estimated; the peak is the largest.
Static memory is counted exactly from the module shapes (weights per dtype or quantization format,
the fp32 LoRA copy, its gradients and optimizer state); activations come from
:mod:`flux2_lora.memory.activations` and :mod:`flux2_lora.memory.encoders`, whose coefficients tests
check against fake-tensor traces of the real modules (:mod:`flux2_lora.training.trace`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.local_model import ModelConfigError
from flux2_lora.memory.activations import (
    activation_profile,
    end_of_backward_activations,
    inference_transient,
    training_activations,
)
from flux2_lora.memory.encoders import IMAGE_BATCH, PROMPT_BATCH, text_encoder_activation_bytes, vae_bytes
from flux2_lora.memory.sharded import fsdp_layout, fsdp_training, gathered_forward
from flux2_lora.targets import LinearSpec, enumerate_linears, is_quantized_linear, resolve_targets
from flux2_lora.units import GIB
from flux2_lora.variants import (
    TextEncoderArch,
    TransformerArch,
    VaeArch,
    get_variant,
    is_demo,
    local_component_params,
    local_text_encoder_arch,
    local_vae_arch,
    resolve_model,
    text_encoder_layers,
)

DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}
# bytes per weight of a quantized Linear: int8 + one bf16 scale per row; NF4 4 bits + double-quantized
# absmax (one 8-bit scale per 64 weights, one fp32 per 256 scales) — bitsandbytes' layout.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
# Measured on an H200 (benchmarks/vram/measured.json): nvidia-smi showed max_memory_reserved + 0.74 GiB
# in every training process (CUDA context, cuBLAS/cuDNN workspaces: outside PyTorch's allocator), and
# the caching allocator reserved 0.4–4.6% above the allocated peak for plain bf16 runs, 5.9–14.1% for
# NF4, int8 and DoRA ones (their per-layer dequantized weights and dense DoRA terms fragment it).
CUDA_CONTEXT_GIB = 0.74
ALLOCATOR_SLACK = 0.05
ALLOCATOR_SLACK_QUANTIZED = 0.12


def allocator_slack(config: TrainConfig) -> float:
    """reserved ≈ allocated × (1 + slack): what the caching allocator holds beyond the tensors."""
    if config.memory.quantization != "none" or config.lora.use_dora:
        return ALLOCATOR_SLACK_QUANTIZED
    return ALLOCATOR_SLACK


# Multi-GPU (DDP through accelerate): NCCL's communicator buffers, outside PyTorch's allocator.
NCCL_GIB = 0.3
# bitsandbytes keeps 8-bit optimizer state only for tensors of at least this many elements.
BNB_MIN_8BIT_SIZE = 4096


@dataclass(frozen=True)
class Shapes:
    variant: str  # "custom" for a local transformer of no known shape
    arch: TransformerArch
    text_encoder: TextEncoderArch
    vae: VaeArch
    weight_bytes: int
    image_tokens: int
    text_tokens: int
    title: str = ""


@functools.lru_cache(maxsize=64)
def _model_shapes(
    path: str, variant: str, stamp: float
) -> tuple[str, TransformerArch, TextEncoderArch, VaeArch, str]:
    """Variant, transformer, text encoder, VAE and title of a model path (cached: a local folder's
    config.json and safetensors headers are read once per modification time ``stamp``).

    A local folder whose configs are broken raises :class:`ModelConfigError`: an estimate of some other
    model would be a wrong answer, not a fallback."""
    custom = False
    try:
        resolved = resolve_model(path, variant)
        name, arch, custom, title = resolved.variant, resolved.arch, resolved.custom, resolved.title
    except ModelConfigError:
        raise
    except ValueError:  # a hub id whose variant cannot be told: size it as the smallest real model
        name = "demo" if is_demo(path) else "klein-4b"
        arch, title = get_variant(name).transformer, get_variant(name).title
    v = get_variant(name)
    te, vae = v.text_encoder, v.vae
    if stamp:
        # A local folder may hold other components than the table's (a fine-tune, a custom small model).
        te = local_text_encoder_arch(path, te)
        vae = local_vae_arch(path, vae)
        te = dataclasses.replace(te, out_layers=text_encoder_layers(path, name))
        te_params = local_component_params(path, "text_encoder")
        vae_params = local_component_params(path, "vae")
        if te_params is not None:
            te = dataclasses.replace(te, params=te_params)
        if vae_params is not None:
            vae = dataclasses.replace(vae, params=vae_params)
    return ("custom" if custom else name), arch, te, vae, title


def _stamp(path: str) -> float:
    """Newest modification time of a local model folder's configs (0 for hub ids and the demo)."""
    if is_demo(path):
        return 0.0
    p = os.path.expanduser(path)
    stamp = 0.0
    for parts in (("transformer", "config.json"), ("config.json",), ("text_encoder", "config.json")):
        try:
            stamp = max(stamp, os.stat(os.path.join(p, *parts)).st_mtime)
        except OSError:
            continue
    return stamp


def resolve_shapes(config: TrainConfig) -> Shapes:
    m = config.model
    variant, arch, te, vae, title = _model_shapes(m.path, m.variant, _stamp(m.path))
    res = config.dataset.resolution
    return Shapes(
        title=title,
        variant=variant,
        arch=arch,
        text_encoder=te,
        vae=vae,
        weight_bytes=DTYPE_BYTES[m.dtype],
        image_tokens=(res // (2 * vae.spatial_factor)) ** 2,  # a token is 2×2 latent cells
        text_tokens=te.max_sequence_length,
    )


@functools.lru_cache(maxsize=64)
def _linears(arch: TransformerArch) -> tuple[LinearSpec, ...]:
    return tuple(enumerate_linears(arch))


def transformer_params(arch: TransformerArch) -> tuple[int, int]:
    """(Linear weights, everything else): the RMSNorm scales of q/k per block."""
    linear = sum(s.weight_numel for s in _linears(arch))
    norms = (
        arch.num_layers * 4 * arch.attention_head_dim + arch.num_single_layers * 2 * arch.attention_head_dim
    )
    return linear, norms


def weight_bytes(arch: TransformerArch, dtype_bytes: int, quantization: str) -> float:
    total = 0.0
    for s in _linears(arch):
        if quantization == "int8" and is_quantized_linear(s.name):
            total += s.weight_numel + 2 * s.out_features
        elif quantization == "nf4" and is_quantized_linear(s.name):
            total += s.weight_numel * NF4_BYTES_PER_WEIGHT
        else:
            total += s.weight_numel * dtype_bytes
    _, norms = transformer_params(arch)
    return total + norms * dtype_bytes


def _lora_tensors(specs: list[LinearSpec], rank: int, dora: bool) -> list[tuple[int, int]]:
    """(rows, cols) of every trainable tensor: A (r×in), B (out×r) and DoRA's magnitude (out×1)."""
    out: list[tuple[int, int]] = []
    for s in specs:
        out += [(rank, s.in_features), (s.out_features, rank)]
        if dora:
            out.append((s.out_features, 1))
    return out


def optimizer_bytes(config: TrainConfig, specs: list[LinearSpec]) -> float:
    """Optimizer state for the fp32 LoRA parameters, as each optimizer lays it out."""
    t, lora = config.training, config.lora
    tensors = _lora_tensors(specs, lora.rank, lora.use_dora)
    n = sum(r * c for r, c in tensors)
    if t.optimizer in ("adamw", "adam"):
        return 8.0 * n
    if t.optimizer == "adamw8bit":
        # Two uint8 states plus one fp32 absmax per 256-element block each; small tensors stay fp32.
        return sum(
            2.0 * r * c + 8.0 * -(-(r * c) // 256) if r * c >= BNB_MIN_8BIT_SIZE else 8.0 * r * c
            for r, c in tensors
        )
    if t.optimizer == "prodigy":
        return 16.0 * n  # exp_avg, exp_avg_sq, s and the p0 copy
    if t.optimizer == "sgd":
        return 4.0 * n if t.momentum > 0 else 0.0
    # Adafactor: a row and a column statistic per matrix, the full second moment for vectors.
    return sum(4.0 * (r + c) if c > 1 else 4.0 * r for r, c in tensors)


def optimizer_step_bytes(config: TrainConfig, specs: list[LinearSpec]) -> float:
    """Temporaries of one optimizer step. The trainer runs Adam/AdamW with torch's fused kernels on
    CUDA (in place); the others use their foreach implementations, which build one full-size fp32 list
    (SGD: the weight-decayed gradients; Adafactor: the variance estimate); Prodigy steps tensor by
    tensor (about twice the largest tensor); bitsandbytes' 8-bit AdamW updates in place."""
    t, lora = config.training, config.lora
    tensors = _lora_tensors(specs, lora.rank, lora.use_dora)
    n = sum(r * c for r, c in tensors)
    if t.optimizer == "adafactor":
        return 4.0 * n
    if t.optimizer == "sgd":
        return 4.0 * n if t.weight_decay > 0 or t.momentum > 0 else 0.0
    if t.optimizer == "prodigy":
        return 8.0 * max(r * c for r, c in tensors)
    return 0.0


def _first_block_params(specs: list[LinearSpec], rank: int, dora: bool) -> int:
    """LoRA parameters of the first block with LoRA (their gradients come last in backward)."""
    blocks = [".".join(s.name.split(".")[:2]) for s in specs if s.block != "other"]
    first = blocks[0] if blocks else None
    return sum(s.lora_params(rank, dora) for s in specs if ".".join(s.name.split(".")[:2]) == first)


def _last_block_params(specs: list[LinearSpec], rank: int, dora: bool) -> int:
    """LoRA parameters whose gradients exist when backward peaks: those of the last block (backward
    starts there) and of layers outside the blocks."""
    blocks = [".".join(s.name.split(".")[:2]) for s in specs if s.block != "other"]
    last = blocks[-1] if blocks else None
    return sum(
        s.lora_params(rank, dora)
        for s in specs
        if s.block == "other" or ".".join(s.name.split(".")[:2]) == last
    )


@dataclass
class Estimate:
    """GiB figures of one configuration (see :func:`estimate`).

    ``components`` break down the peak phase and add up to ``total_gib``; ``phase_components`` has the
    breakdown of every phase (tensor memory only)."""

    variant: str  # "custom" for a local transformer of no known shape (see ``model``)
    trainable_params: int
    components: dict[str, float]
    phases: dict[str, float]
    peak_phase: str
    allocated_peak_gib: float
    total_gib: float
    image_tokens: int
    text_tokens: int
    phase_components: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: str = ""  # the model's title

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _part(**parts: float) -> dict[str, float]:
    keys: tuple[str, ...] = (
        "weights",
        "lora",
        "gradients",
        "optimizer",
        "activations",
        "text_encoder",
        "vae",
    )
    if "gathered" in parts:  # FSDP: the units all-gathered at that moment
        keys = (*keys, "gathered")
    return {k: parts.get(k, 0.0) / GIB for k in keys}


# Everything below depends on the architecture and a few settings only: cached, so that the re-estimates
# of recommendations and of the UI's live panel cost microseconds. Keys are small hashable values.
@functools.lru_cache(maxsize=256)
def _specs(tokens: tuple[str, ...], arch: TransformerArch) -> tuple[LinearSpec, ...]:
    return tuple(resolve_targets(list(tokens), arch))


@functools.lru_cache(maxsize=64)
def _weights(arch: TransformerArch, dtype_bytes: int, quantization: str) -> float:
    total = weight_bytes(arch, dtype_bytes, quantization)
    if quantization != "none":
        # QLoRA dequantizes one layer's weight for its matmul: the largest one is a transient on top.
        total += max(s.weight_numel for s in _linears(arch)) * dtype_bytes
    return total


@functools.lru_cache(maxsize=1024)
def _training_activations(
    tokens: tuple[str, ...],
    arch: TransformerArch,
    dtype_bytes: int,
    img: int,
    txt: int,
    batch: int,
    checkpointing: bool,
    dora: bool,
    kernels: str,
    quantization: str,
) -> float:
    return training_activations(
        arch,
        list(_specs(tokens, arch)),
        dtype_bytes=dtype_bytes,
        img=img,
        txt=txt,
        batch=batch,
        checkpointing=checkpointing,
        dora=dora,
        kernels=kernels,
        quantization=quantization,
    )


@functools.lru_cache(maxsize=256)
def _inference(
    tokens: tuple[str, ...], arch: TransformerArch, dtype_bytes: int, img: int, txt: int, dora: bool
) -> float:
    specs = list(_specs(tokens, arch))
    return inference_transient(arch, specs, dtype_bytes=dtype_bytes, img=img, txt=txt, dora=dora)


@functools.lru_cache(maxsize=256)
def _profile(
    tokens: tuple[str, ...],
    arch: TransformerArch,
    dtype_bytes: int,
    img: int,
    txt: int,
    batch: int,
    checkpointing: bool,
    dora: bool,
    kernels: str,
) -> tuple[list[float], list[float]]:
    return activation_profile(
        arch,
        list(_specs(tokens, arch)),
        dtype_bytes=dtype_bytes,
        img=img,
        txt=txt,
        batch=batch,
        checkpointing=checkpointing,
        dora=dora,
        kernels=kernels,
        bf16_lora=True,  # FSDP gathers the LoRA in the weights' dtype
    )


def clear_caches() -> None:
    """Forget cached shapes (for benchmarks of a cold estimate, and after a model folder changes)."""
    for f in (_model_shapes, _linears, _specs, _weights, _training_activations, _inference, _profile):
        f.cache_clear()
    fsdp_layout.cache_clear()


def estimate(config: TrainConfig, *, num_processes: int | None = None, kernels: str = "cuda") -> Estimate:
    """Peak GPU memory of one training process: per GPU. Data parallel (DDP): every process holds the
    whole model; FSDP (``distributed.strategy``): a 1/N shard of it and the units it gathers.

    ``num_processes``: the processes over all machines (default: the config's ``distributed``).
    ``kernels="cuda"`` uses the activation figures measured on a GPU; ``"trace"`` the CPU meta-tensor
    trace's own (what tests/memory compares against a fresh trace)."""
    num_processes = num_processes or config.distributed.world_size
    sh = resolve_shapes(config)
    arch, mem, lora, t = sh.arch, config.memory, config.lora, config.training
    wb = sh.weight_bytes
    tokens = tuple(lora.target_modules)
    specs = list(_specs(tokens, arch))
    n_lora = sum(s.lora_params(lora.rank, lora.use_dora) for s in specs)
    batch, res = t.batch_size, config.dataset.resolution
    img, txt = sh.image_tokens, sh.text_tokens
    te, vae = sh.text_encoder, sh.vae
    notes: list[str] = []

    weights = _weights(arch, wb, mem.quantization)
    lora_b = 4.0 * n_lora  # fp32 adapter (model.inject_lora)
    grads_all = 4.0 * n_lora
    # Backward peaks at its start (the last block), when only that block's gradients exist, unless
    # gradients accumulate over micro-batches: then all of them live through the later ones.
    accumulating = t.gradient_accumulation_steps > 1
    grads_early = grads_all if accumulating else 4.0 * _last_block_params(specs, lora.rank, lora.use_dora)
    ddp = 0.0
    fsdp = config.distributed.strategy == "fsdp" and num_processes > 1
    if fsdp:
        notes.append(
            f"per GPU, on each of {num_processes} GPUs: FSDP shards the weights, LoRA, gradients and optimizer "
            "state; one block at a time is gathered whole"
        )
    elif num_processes > 1:
        ddp = 4.0 * n_lora  # DDP's gradient buckets, allocated with the model: an fp32 copy for all-reduce
        notes.append(f"per process, on each of {num_processes} GPUs (DDP gradient buckets included)")
    optim = optimizer_bytes(config, specs)
    step = optimizer_step_bytes(config, specs)
    te_w, vae_w = te.params * wb, vae.params * wb
    # Components kept on the GPU while training: those not cached and not offloaded to the CPU.
    te_train = te_w if not mem.cache_text_embeddings and not mem.cpu_offload else 0.0
    vae_train = vae_w if not mem.cache_latents and not mem.cpu_offload else 0.0

    act = _training_activations(
        tokens,
        arch,
        wb,
        img,
        txt,
        batch,
        mem.gradient_checkpointing,
        lora.use_dora,
        kernels,
        mem.quantization,
    )
    # Encoding a batch that is not cached happens before the forward pass, without its activations.
    encode = 0.0
    if te_train:
        encode = text_encoder_activation_bytes(te, wb, batch)
    if vae_train:
        encode = max(
            encode, vae_bytes(vae, wb, res, batch=1, decode=False, slicing=True, tiling=mem.vae_tiling)
        )
    static = dict(weights=weights, lora=lora_b, text_encoder=te_train, vae=vae_train)
    # The step's peak is the larger of backward (activations, few gradients) and the optimizer step
    # (every gradient plus the step's temporaries).
    backward = _part(**static, gradients=grads_early + ddp, optimizer=optim, activations=max(act, encode))
    # The end of backward: every gradient but the first LoRA'd block's, with that block's activations.
    first_params = 4.0 * _first_block_params(specs, lora.rank, lora.use_dora)
    end_act = end_of_backward_activations(
        arch,
        specs,
        dtype_bytes=wb,
        img=img,
        txt=txt,
        batch=batch,
        checkpointing=mem.gradient_checkpointing,
        kernels=kernels,
        quantization=mem.quantization,
    )
    backward_end = _part(
        **static,
        gradients=(grads_all if accumulating else grads_all - first_params) + ddp,
        optimizer=optim,
        activations=end_act,
    )
    optimizer_step = _part(**static, gradients=grads_all + ddp, optimizer=optim + step)
    training = max(backward, backward_end, optimizer_step, key=lambda p: sum(p.values()))
    layout = None
    if fsdp:
        layout = fsdp_layout(arch, _linears(arch), tuple(specs), lora.rank, lora.use_dora, wb, num_processes)
        profile = _profile(
            tokens, arch, wb, img, txt, batch, mem.gradient_checkpointing, lora.use_dora, kernels
        )
        training = _part(
            **fsdp_training(
                layout,
                profile,
                n_lora,
                optim,
                step,
                wb,
                accumulating,
                encode,
                te_train,
                vae_train,
                config.distributed.fsdp_reshard_after_forward,
                config.distributed.fsdp_cpu_offload,
            )
        )

    # Caching: text encoder (unless it encodes on the CPU) and VAE on the GPU, no transformer yet.
    te_gpu = 0.0 if mem.cpu_offload else te_w
    # Every caption when caching them, else only the validation prompts (and the empty CFG prompt).
    val = config.validation
    if mem.cache_text_embeddings:
        prompts = PROMPT_BATCH
    else:
        prompts = min(PROMPT_BATCH, (len(val.prompts) or 1) + 1) if val.enabled else 0
    te_act = text_encoder_activation_bytes(te, wb, prompts) if te_gpu else 0.0
    caching_te = _part(text_encoder=te_gpu, vae=vae_w, activations=te_act)
    caching = caching_te
    if mem.cache_latents:
        # The text encoder is freed after caching its embeddings; otherwise it stays for training.
        te_kept = te_gpu if not mem.cache_text_embeddings else 0.0
        images = vae_bytes(
            vae, wb, res, batch=IMAGE_BATCH, decode=False, slicing=mem.vae_slicing, tiling=mem.vae_tiling
        )
        caching_vae = _part(text_encoder=te_kept, vae=vae_w, activations=images)
        caching = max(caching_te, caching_vae, key=lambda p: sum(p.values()))

    # Validation: one no-grad forward per denoising step (classifier-free guidance runs its two passes
    # one after the other), then a VAE decode; optimizer state stays, gradients were set to None.
    phases_parts = {"caching": caching, "training": training}
    if config.validation.enabled:
        infer = _inference(tokens, arch, wb, img, txt, lora.use_dora)
        decode = vae_bytes(vae, wb, res, batch=1, decode=True, slicing=mem.vae_slicing, tiling=mem.vae_tiling)
        if layout is not None:  # every process runs the sharded forward, gathering unit by unit
            share = layout.sharded_lora / max(n_lora, 1)
            phases_parts["sampling"] = _part(
                weights=layout.sharded_weights,
                lora=4.0 * layout.sharded_lora,
                optimizer=optim * share,
                activations=max(infer, decode),
                text_encoder=te_train,
                vae=vae_w,
                gathered=gathered_forward(
                    layout, [0.0] * len(layout.units), config.distributed.fsdp_reshard_after_forward
                )[0],
            )
        else:
            phases_parts["sampling"] = _part(
                weights=weights,
                lora=lora_b,
                optimizer=optim,
                gradients=ddp,
                activations=max(infer, decode),
                text_encoder=te_train,
                vae=vae_w,
            )

    phases = {k: sum(v.values()) for k, v in phases_parts.items()}
    peak_phase = max(phases, key=lambda k: phases[k])
    peak = phases[peak_phase]
    overhead = peak * allocator_slack(config) + CUDA_CONTEXT_GIB + (NCCL_GIB if num_processes > 1 else 0.0)
    total = peak + overhead
    if peak_phase != "training":
        notes.append(f"the peak comes while {peak_phase}, not during the training steps")
    return Estimate(
        variant=sh.variant,
        trainable_params=n_lora,
        components={**phases_parts[peak_phase], "overhead": overhead},
        phases=phases,
        peak_phase=peak_phase,
        allocated_peak_gib=peak,
        total_gib=total,
        image_tokens=img,
        text_tokens=txt,
        phase_components=phases_parts,
        notes=notes,
        model=sh.title,
    )
