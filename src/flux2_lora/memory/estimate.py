"""GPU memory of a training run, from the architecture and the config (pure Python, no torch).

Static memory is counted exactly from the module shapes (weights per dtype or quantization format,
the fp32 LoRA copy, its gradients and optimizer state). Activations are counted per token and per
block from what the block's ops save for backward, in units of the model width d and the MLP width
m (see ``_block_activation_elems``); a test checks the sum against a fake-tensor trace of the real
modules (:mod:`flux2_lora.memory.trace`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import TrainConfig
from ..targets import LinearSpec, enumerate_linears, is_quantized_linear, resolve_targets
from ..variants import (
    DEMO_MODEL_PATH,
    TextEncoderArch,
    TransformerArch,
    VaeArch,
    get_variant,
    local_component_params,
    resolve_model,
)

GIB = 2**30
DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}
# bytes per weight of a quantized Linear: int8 + one bf16 scale per row; NF4 4 bits + double-quantized
# absmax (one 8-bit scale per 64 weights, one fp32 per 256 scales) — bitsandbytes' layout.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT_GIB = 0.6  # CUDA context + cuBLAS workspace, outside PyTorch's allocator
ALLOCATOR_SLACK = 0.07  # caching-allocator fragmentation: reserved ≈ allocated × (1 + slack)


@dataclass(frozen=True)
class Shapes:
    variant: str
    arch: TransformerArch
    text_encoder: TextEncoderArch
    vae: VaeArch
    weight_bytes: int
    image_tokens: int
    text_tokens: int


def resolve_shapes(config: TrainConfig) -> Shapes:
    m = config.model
    try:
        resolved = resolve_model(m.path, m.variant)
        variant, arch = resolved.variant, resolved.arch
    except ValueError:
        variant = "demo" if m.path.strip().lower() == DEMO_MODEL_PATH else "klein-4b"
        arch = get_variant(variant).transformer
    v = get_variant(variant)
    res = config.dataset.resolution
    te, vae = v.text_encoder, v.vae
    if m.path.strip().lower() != DEMO_MODEL_PATH:
        # A local folder may hold other components than the table's (a fine-tune, a custom small model).
        te_params = local_component_params(m.path, "text_encoder")
        vae_params = local_component_params(m.path, "vae")
        if te_params is not None:
            te = dataclasses.replace(te, params=te_params)
        if vae_params is not None:
            vae = dataclasses.replace(vae, params=vae_params)
    return Shapes(
        variant=variant,
        arch=arch,
        text_encoder=te,
        vae=vae,
        weight_bytes=DTYPE_BYTES[m.dtype],
        image_tokens=(res // 16) ** 2,
        text_tokens=v.text_encoder.max_sequence_length,
    )


def transformer_params(arch: TransformerArch) -> tuple[int, int]:
    """(Linear weights, everything else): the RMSNorm scales of q/k per block."""
    linear = sum(s.weight_numel for s in enumerate_linears(arch))
    norms = (
        arch.num_layers * 4 * arch.attention_head_dim + arch.num_single_layers * 2 * arch.attention_head_dim
    )
    return linear, norms


def weight_bytes(arch: TransformerArch, dtype_bytes: int, quantization: str) -> float:
    total = 0.0
    for s in enumerate_linears(arch):
        if quantization == "int8" and is_quantized_linear(s.name):
            total += s.weight_numel + 2 * s.out_features
        elif quantization == "nf4" and is_quantized_linear(s.name):
            total += s.weight_numel * NF4_BYTES_PER_WEIGHT
        else:
            total += s.weight_numel * dtype_bytes
    _, norms = transformer_params(arch)
    return total + norms * dtype_bytes


def optimizer_bytes(config: TrainConfig, specs: list[LinearSpec]) -> float:
    """Optimizer state for the fp32 LoRA parameters, as each optimizer lays it out."""
    t, lora = config.training, config.lora
    n = sum(s.lora_params(lora.rank, lora.use_dora) for s in specs)
    if t.optimizer in ("adamw", "adam"):
        return 8.0 * n
    if t.optimizer == "adamw8bit":
        return 2.0 * n + 8.0 * n / 2048  # two 8-bit states + per-block absmax
    if t.optimizer == "prodigy":
        return 16.0 * n  # exp_avg, exp_avg_sq, s and the p0 copy
    if t.optimizer == "sgd":
        return 4.0 * n if t.momentum > 0 else 0.0
    # Adafactor: a row and a column statistic per matrix (A: r×in, B: out×r), full state for vectors.
    r = lora.rank
    total = sum(4.0 * ((r + s.in_features) + (s.out_features + r)) for s in specs)
    if lora.use_dora:
        total += sum(4.0 * s.out_features for s in specs)
    return total


# Bytes saved for backward per token and per unit of model width d, by stream, for each weight
# precision. Counted from what each op of a FLUX.2 block keeps (LayerNorm and RMSNorm inputs, the
# SDPA q/k/v/out/logsumexp, the SwiGLU halves, and the inputs of every LoRA layer) and checked against
# traces of the real modules (tests/memory). A stream that only passes the gradient on ("base") keeps
# less than one whose own Linear layers carry LoRA (each LoRA'd Linear keeps its input).
_COEF = {
    2: {
        "double_base": 38.11,
        "double_attn": 16.07,
        "double_ff": 16.04,
        "single_base": 40.10,
        "single_lora": 20.04,
    },
    4: {
        "double_base": 68.13,
        "double_attn": 4.05,
        "double_ff": 16.01,
        "single_base": 64.11,
        "single_lora": 20.04,
    },
}
_ATTN = {
    "img": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
    "txt": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"),
}
_FF = {"img": ("ff.linear_in", "ff.linear_out"), "txt": ("ff_context.linear_in", "ff_context.linear_out")}


def block_activation_bytes(
    arch: TransformerArch, specs: list[LinearSpec], dtype_bytes: int, img: int, txt: int
) -> list[float]:
    """Bytes each block keeps for backward (batch 1, no checkpointing), in execution order.

    Blocks before the first one with LoRA keep nothing: no gradient has to pass through them."""
    c = _COEF[4 if dtype_bytes == 4 else 2]
    d = arch.inner_dim
    targeted = {s.name for s in specs}
    out: list[float] = []
    grad_flows = False
    for i in range(arch.num_layers):
        p = f"transformer_blocks.{i}."
        has = {
            (stream, kind): any(p + n in targeted for n in names)
            for kind, table in (("attn", _ATTN), ("ff", _FF))
            for stream, names in table.items()
        }
        grad_flows = grad_flows or any(has.values())
        if not grad_flows:
            out.append(0.0)
            continue
        total = 0.0
        for stream, tokens in (("img", img), ("txt", txt)):
            per = (
                c["double_base"]
                + c["double_attn"] * has[(stream, "attn")]
                + c["double_ff"] * has[(stream, "ff")]
            )
            total += per * tokens * d
        out.append(total)
    for i in range(arch.num_single_layers):
        p = f"single_transformer_blocks.{i}."
        lora = any(p + n in targeted for n in ("attn.to_qkv_mlp_proj", "attn.to_out"))
        grad_flows = grad_flows or lora
        out.append((c["single_base"] + c["single_lora"] * lora) * (img + txt) * d if grad_flows else 0.0)
    return out


# DoRA (PEFT): each adapted Linear also keeps its base output and its scaled LoRA output for the
# magnitude's gradient (bytes per token per output feature), and builds the dense weight W + s·BA and
# its column norm in fp32 once per forward: a transient of a·in·out + 4·in² bytes (the identity
# matrix PEFT multiplies through the adapter). Measured on one PEFT layer with the tracker.
_DORA_KEPT = {2: 6.0, 4: 8.0}
_DORA_DENSE = {2: 14.5, 4: 12.0}
# Backward through DoRA's fp32 combination of the base and LoRA outputs: gradients of T×out elements
# (bytes per token per output feature of the widest DoRA layer). In fp32 the plain gradient transient
# is already larger (measured), so it adds nothing there.
_DORA_GRAD = {2: 11.3, 4: 0.0}


def _stream_tokens(spec: LinearSpec, img: int, txt: int) -> int:
    if spec.block == "single":
        return img + txt
    return txt if any(spec.name.endswith(n) for n in _ATTN["txt"] + _FF["txt"]) else img


def dora_block_bytes(
    arch: TransformerArch, specs: list[LinearSpec], dtype_bytes: int, img: int, txt: int
) -> list[float]:
    """Extra bytes each block keeps for backward with DoRA (batch 1), in execution order."""
    per: dict[str, float] = {}
    for s in specs:
        block = ".".join(s.name.split(".")[:2])
        per[block] = (
            per.get(block, 0.0) + _DORA_KEPT[dtype_bytes] * _stream_tokens(s, img, txt) * s.out_features
        )
    names = [f"transformer_blocks.{i}" for i in range(arch.num_layers)]
    names += [f"single_transformer_blocks.{i}" for i in range(arch.num_single_layers)]
    return [per.get(n, 0.0) for n in names]


def dora_transient_bytes(specs: list[LinearSpec], dtype_bytes: int, img: int, txt: int, batch: int) -> float:
    """Peak DoRA transient beyond the kept activations: the dense weight or the backward gradients."""
    dense = max(
        (_DORA_DENSE[dtype_bytes] * s.weight_numel + 4.0 * s.in_features**2 for s in specs), default=0.0
    )
    grads = max(
        (_DORA_GRAD[dtype_bytes] * batch * _stream_tokens(s, img, txt) * s.out_features for s in specs),
        default=0.0,
    )
    return max(dense, grads)


# Gradients alive beyond the kept activations while the last single block runs backward (bytes per d
# per token; [fp32?][single blocks carry LoRA?]), and, with checkpointing, beyond its recomputation.
_TRANSIENT = {False: {False: 37.9, True: 36.9}, True: {False: 75.9, True: 60.1}}
_TRANSIENT_GC = {False: {False: 35.9, True: 35.8}, True: {False: 71.9, True: 56.1}}
# The first block with LoRA keeps less: nothing before its first LoRA layer needs a gradient
# (bytes per d per token at bf16, for the named target sets; 0 for hand-picked lists).
_FIRST_BLOCK_DISCOUNT = {
    "double-attn": 2.7,
    "default": 2.7,
    "double-ff": 18.1,
    "double-attn-context": 5.4,
    "all-attention": 2.7,
}


def _named_set(tokens: list[str]) -> str | None:
    return tokens[0] if len(tokens) == 1 else None


@dataclass
class Estimate:
    """GiB figures of one configuration (see :func:`estimate`)."""

    variant: str
    trainable_params: int
    components: dict[str, float]
    phases: dict[str, float]
    allocated_peak_gib: float
    total_gib: float
    image_tokens: int
    text_tokens: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(config: TrainConfig, *, num_processes: int = 1) -> Estimate:
    """Peak GPU memory of one training process (data parallel: every process holds the same)."""
    sh = resolve_shapes(config)
    arch, mem, lora = sh.arch, config.memory, config.lora
    wb = sh.weight_bytes
    specs = resolve_targets(lora.target_modules, arch)
    n_lora = sum(s.lora_params(lora.rank, lora.use_dora) for s in specs)
    batch = config.training.batch_size
    img, txt = sh.image_tokens, sh.text_tokens

    weights = weight_bytes(arch, wb, mem.quantization)
    if mem.quantization != "none":
        # QLoRA dequantizes one layer's weight for its matmul: the largest one is a transient on top.
        weights += max(s.weight_numel for s in enumerate_linears(arch)) * wb
    lora_b = 4.0 * n_lora  # fp32 adapter
    grads = 4.0 * n_lora
    optim = optimizer_bytes(config, specs)
    blocks = block_activation_bytes(arch, specs, wb, img, txt)
    tokens_d = (img + txt) * arch.inner_dim
    single_lora = any(s.block == "single" for s in specs)
    c = _COEF[4 if wb == 4 else 2]
    dwb = 4 if wb == 4 else 2
    dora = dora_block_bytes(arch, specs, dwb, img, txt) if lora.use_dora else [0.0] * len(blocks)
    dense = dora_transient_bytes(specs, dwb, img, txt, batch) if lora.use_dora else 0.0
    if mem.gradient_checkpointing:
        # Each block keeps only its input; backward starts by recomputing the last single block, while
        # every block input is still alive, and holds that block's activations plus its gradients.
        kept = float(sum(wb * tokens_d for b in blocks if b > 0))
        last_single = (
            (c["single_base"] + c["single_lora"] * single_lora) * tokens_d if arch.num_single_layers else 0.0
        )
        activations = batch * (kept + last_single + dora[-1])
        activations += max(batch * _TRANSIENT_GC[wb == 4][single_lora] * tokens_d, dense)
    else:
        first = next((i for i, b in enumerate(blocks) if b > 0), None)
        discount = _FIRST_BLOCK_DISCOUNT.get(_named_set(lora.target_modules) or "", 0.0) * (wb / 2) * tokens_d
        kept = sum(blocks) - (discount if first is not None else 0.0)
        activations = batch * (kept + sum(dora))
        activations += max(batch * _TRANSIENT[wb == 4][single_lora] * tokens_d, dense)
    # Outside the blocks: embedders' outputs and the fp32 loss terms (small next to the blocks).
    activations += batch * 0.225 * wb * tokens_d

    te_params = sh.text_encoder.params
    te_b = te_params * wb if not mem.cache_text_embeddings else 0.0
    vae_b = sh.vae.params * wb if not mem.cache_latents else 0.0
    if mem.cpu_offload:
        te_b = vae_b = 0.0  # moved to the GPU only while they run (the caching phase)
    train = weights + lora_b + grads + optim + activations + te_b + vae_b

    # Caching: the text encoder (then the VAE) on the GPU by itself, before the transformer is loaded.
    caching = te_params * wb + 2.0 * 4096 * sh.text_encoder.hidden_size * wb * len(sh.text_encoder.out_layers)
    vae_encode = sh.vae.params * wb + batch * (config.dataset.resolution**2) * 3 * 4 * 24
    if mem.vae_slicing:
        vae_encode = sh.vae.params * wb + (config.dataset.resolution**2) * 3 * 4 * 24
    if mem.cpu_offload:
        caching = 0.0  # the text encoder encodes on the CPU
    caching = max(caching, vae_encode) if (mem.cache_text_embeddings or mem.cache_latents) else 0.0
    # Validation: inference only (no saved activations) with the VAE decoder on the GPU.
    sampling = (
        weights + lora_b + optim + grads * 0 + sh.vae.params * wb + (img + txt) * arch.inner_dim * wb * 12
    )
    if config.validation.enabled and not mem.cache_text_embeddings:
        sampling += te_params * wb

    phases = {"caching": caching / GIB, "training": train / GIB, "sampling": sampling / GIB}
    peak = max(phases.values())
    total = peak * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GIB
    notes = []
    if num_processes > 1:
        notes.append(f"per process, on each of {num_processes} GPUs")
    return Estimate(
        variant=sh.variant,
        trainable_params=n_lora,
        components={
            "weights": weights / GIB,
            "lora": lora_b / GIB,
            "gradients": grads / GIB,
            "optimizer": optim / GIB,
            "activations": activations / GIB,
            "text_encoder": te_b / GIB,
            "vae": vae_b / GIB,
            "overhead": total - peak,
        },
        phases=phases,
        allocated_peak_gib=peak,
        total_gib=total,
        image_tokens=img,
        text_tokens=txt,
        notes=notes,
    )
