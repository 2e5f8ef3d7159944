"""Static GPU memory of a run, counted exactly from the module shapes (pure Python, no torch): the frozen
weights per dtype or quantization format, the fp32 LoRA, its gradients and its optimizer state.

What depends on the architecture and a few settings only is cached (keys are small hashable values), so
that the recommendations' re-estimates and the UI's live panel cost microseconds;
:func:`flux2_lora.memory.estimate.clear_caches` clears these caches too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from flux2_lora.config import TrainConfig
from flux2_lora.memory.adapters import LORA, AdapterKind, adapter_kind, adapter_tensors
from flux2_lora.targets import (
    LinearSpec,
    block_linears,
    enumerate_linears,
    is_quantized_linear,
    resolve_targets,
)
from flux2_lora.variants import TransformerArch

# bytes per weight of a quantized Linear: int8 + one bf16 scale per row; NF4 4 bits + double-quantized
# absmax (one 8-bit scale per 64 weights, one fp32 per 256 scales) — bitsandbytes' layout.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
# bitsandbytes keeps 8-bit optimizer state only for tensors of at least this many elements.
BNB_MIN_8BIT_SIZE = 4096
# fp8 weights (memory.quantization: fp8): one float8 e4m3 byte per weight plus one fp32 scale per output
# row, for the same Linears NF4/int8 quantize (targets.is_quantized_linear).
FP8_SCALE_BYTES = 4
# Block swap's GPU slots (training/block_swap.py BlockSwap.SLOTS): the block computing, the one copied in.
SWAP_SLOTS = 2


@functools.lru_cache(maxsize=64)
def linears(arch: TransformerArch) -> tuple[LinearSpec, ...]:
    return tuple(enumerate_linears(arch))


@functools.lru_cache(maxsize=64)
def transformer_params(arch: TransformerArch) -> tuple[int, int]:
    """(Linear weights, everything else): the RMSNorm scales of q/k per block."""
    linear = sum(s.weight_numel for s in linears(arch))
    norms = (
        arch.num_layers * 4 * arch.attention_head_dim + arch.num_single_layers * 2 * arch.attention_head_dim
    )
    return linear, norms


@functools.lru_cache(maxsize=64)
def outside_linears(arch: TransformerArch) -> tuple[LinearSpec, ...]:
    """The Linears outside the blocks (embedders, modulation, output): a handful."""
    return tuple(s for s in linears(arch) if s.block == "other")


def weight_bytes(arch: TransformerArch, dtype_bytes: int, quantization: str) -> float:
    """The frozen transformer's bytes: the blocks' (their norm scales included) and the Linears outside."""
    outside = sum(linear_bytes(s, dtype_bytes, quantization) for s in outside_linears(arch))
    return outside + sum(block_bytes(arch, dtype_bytes, quantization))


def linear_bytes(s: LinearSpec, dtype_bytes: int, quantization: str) -> float:
    """The stored bytes of one frozen Linear's weight in a quantization format."""
    if quantization == "none" or not is_quantized_linear(s.name):
        return float(s.weight_numel * dtype_bytes)
    if quantization == "int8":
        return float(s.weight_numel + 2 * s.out_features)
    if quantization == "fp8":
        return float(s.weight_numel + FP8_SCALE_BYTES * s.out_features)
    return s.weight_numel * NF4_BYTES_PER_WEIGHT


def swappable_blocks(arch: TransformerArch) -> int:
    """How many blocks memory.blocks_to_swap may name: all but two (the two GPU buffers the swap
    streams through must differ from the blocks it swaps to gain anything)."""
    return max(arch.num_layers + arch.num_single_layers - 2, 0)


@functools.lru_cache(maxsize=64)
def _kinds(arch: TransformerArch) -> tuple[tuple[int, int], tuple[int, int]]:
    """(weights, output rows) of the Linears of one double-stream block and of one single-stream block,
    summed (all blocks of a kind are alike); every block Linear is quantized
    (targets.is_quantized_linear), so bytes are linear in both."""
    double, single = block_linears(arch)
    return (
        (sum(i * o for _, i, o in double), sum(o for _, _, o in double)),
        (sum(i * o for _, i, o in single), sum(o for _, _, o in single)),
    )


def _stored(numel: int, rows: int, dtype_bytes: int, quantization: str) -> float:
    """Stored bytes of block Linears of ``numel`` weights and ``rows`` output rows in all."""
    if quantization == "int8":
        return float(numel + 2 * rows)
    if quantization == "fp8":
        return float(numel + FP8_SCALE_BYTES * rows)
    if quantization == "nf4":
        return numel * NF4_BYTES_PER_WEIGHT
    return float(numel * dtype_bytes)


@functools.lru_cache(maxsize=64)
def block_bytes(arch: TransformerArch, dtype_bytes: int, quantization: str) -> tuple[float, ...]:
    """Frozen bytes of every transformer block in execution order (double-stream blocks, then single),
    its q/k RMSNorm scales included."""
    hd = arch.attention_head_dim
    double, single = (_stored(n, r, dtype_bytes, quantization) for n, r in _kinds(arch))
    return (double + 4 * hd * dtype_bytes,) * arch.num_layers + (
        single + 2 * hd * dtype_bytes,
    ) * arch.num_single_layers


class Swap(NamedTuple):  # a named tuple: the table has one per swappable block, built per estimate
    """Block swap (memory.blocks_to_swap): the last ``blocks`` blocks in execution order keep their frozen
    weights in pinned host memory; at most two of them are on the GPU at once (computing + prefetching),
    in the two slots training/block_swap.py allocates whatever the count (so one swapped block costs a
    block more than none, and two save nothing: the meta trace of the swap shows it)."""

    blocks: int
    pinned: float  # host bytes: the swapped blocks' frozen weights, in their storage format
    buffers: float  # GPU bytes: 2 slots × the largest swapped block (BlockSwap.SLOTS)
    saved: float  # GPU bytes no longer resident: the swapped blocks less the buffers
    copied: float  # bytes copied host→GPU per training step: each swapped block once forward, once backward


@functools.lru_cache(maxsize=64)
def swap_table(arch: TransformerArch, dtype_bytes: int, quantization: str) -> tuple[Swap, ...]:
    """:class:`Swap` for every count from 0 to :func:`swappable_blocks` (one pass over the blocks)."""
    sizes = block_bytes(arch, dtype_bytes, quantization)
    out = [Swap(0, 0.0, 0.0, 0.0, 0.0)]
    pinned = largest = 0.0
    for n in range(1, swappable_blocks(arch) + 1):
        size = sizes[len(sizes) - n]
        pinned += size
        largest = max(largest, size)
        buffers = SWAP_SLOTS * largest
        out.append(
            Swap(blocks=n, pinned=pinned, buffers=buffers, saved=pinned - buffers, copied=2.0 * pinned)
        )
    return tuple(out)


def block_swap(arch: TransformerArch, dtype_bytes: int, quantization: str, blocks: int) -> Swap:
    table = swap_table(arch, dtype_bytes, quantization)
    return table[min(max(blocks, 0), len(table) - 1)]


def _lora_tensors(
    specs: Sequence[LinearSpec], rank: int, dora: bool, kind: AdapterKind = LORA
) -> list[tuple[int, int]]:
    """(rows, cols) of every trainable tensor: A (r×in), B (out×r) and DoRA's magnitude (out×1) for a
    LoRA; LoKr's and LoHa's factors (memory.adapters) for those."""
    out: list[tuple[int, int]] = []
    for s in specs:
        out += adapter_tensors(s.in_features, s.out_features, rank, dora, kind)
    return out


def _optimizer_state(tensors: Sequence[tuple[int, int]], n: int, optimizer: str, momentum: float) -> float:
    """``tensors``: (rows, cols) of each LoRA tensor (needed by 8-bit AdamW and Adafactor); ``n``: their
    elements."""
    if optimizer in ("adamw", "adam"):
        return 8.0 * n
    if optimizer == "adamw8bit":
        # Two uint8 states plus one fp32 absmax per 256-element block each; small tensors stay fp32.
        return sum(
            2.0 * r * c + 8.0 * -(-(r * c) // 256) if r * c >= BNB_MIN_8BIT_SIZE else 8.0 * r * c
            for r, c in tensors
        )
    if optimizer == "prodigy":
        return 16.0 * n  # exp_avg, exp_avg_sq, s and the p0 copy
    if optimizer == "sgd":
        return 4.0 * n if momentum > 0 else 0.0
    # Adafactor: a row and a column statistic per matrix, the full second moment for vectors.
    return sum(4.0 * (r + c) if c > 1 else 4.0 * r for r, c in tensors)


def _optimizer_step(
    tensors: Sequence[tuple[int, int]], n: int, optimizer: str, momentum: float, weight_decay: float
) -> float:
    """``tensors`` as for :func:`_optimizer_state` (needed by Prodigy)."""
    if optimizer == "adafactor":
        return 4.0 * n
    if optimizer == "sgd":
        return 4.0 * n if weight_decay > 0 or momentum > 0 else 0.0
    if optimizer == "prodigy":
        return 8.0 * max(r * c for r, c in tensors)
    return 0.0


def optimizer_bytes(config: TrainConfig, specs: Sequence[LinearSpec]) -> float:
    """Optimizer state for the fp32 LoRA parameters, as each optimizer lays it out."""
    t, lora = config.training, config.lora
    tensors = _lora_tensors(specs, lora.rank, lora.use_dora, adapter_kind(lora))
    return _optimizer_state(tensors, sum(r * c for r, c in tensors), t.optimizer, t.momentum)


def optimizer_step_bytes(config: TrainConfig, specs: Sequence[LinearSpec]) -> float:
    """Temporaries of one optimizer step. The trainer runs Adam/AdamW with torch's fused kernels on
    CUDA (in place); the others use their foreach implementations, which build one full-size fp32 list
    (SGD: the weight-decayed gradients; Adafactor: the variance estimate); Prodigy steps tensor by
    tensor (about twice the largest tensor); bitsandbytes' 8-bit AdamW updates in place."""
    t, lora = config.training, config.lora
    tensors = _lora_tensors(specs, lora.rank, lora.use_dora, adapter_kind(lora))
    n = sum(r * c for r, c in tensors)
    return _optimizer_step(tensors, n, t.optimizer, t.momentum, t.weight_decay)


@dataclass(frozen=True)
class Adapter:
    """The LoRA of one target list on one transformer, at one rank."""

    specs: tuple[LinearSpec, ...]
    params: int
    first_block: int  # parameters of the first block with LoRA (their gradients come last in backward)
    # Parameters whose gradients exist when backward peaks: those of the last block with LoRA (backward
    # starts there) and of the layers outside the blocks.
    last_block: int


@functools.lru_cache(maxsize=256)
def target_specs(tokens: tuple[str, ...], arch: TransformerArch) -> tuple[LinearSpec, ...]:
    return tuple(resolve_targets(list(tokens), arch, linears=linears(arch)))


@functools.lru_cache(maxsize=256)
def lora_adapter(
    tokens: tuple[str, ...], arch: TransformerArch, rank: int, dora: bool, kind: AdapterKind = LORA
) -> Adapter:
    specs = target_specs(tokens, arch)
    total = outside = 0
    # Blocks in module order, which is execution order: the first and the last block with LoRA.
    first = last = -1
    first_n = last_n = 0
    per_shape: dict[tuple[int, int], int] = {}  # a model has a handful of Linear shapes
    for s in specs:
        shape = (s.in_features, s.out_features)
        n = per_shape.get(shape)
        if n is None:
            n = per_shape[shape] = sum(r * c for r, c in adapter_tensors(*shape, rank, dora, kind))
        total += n
        if s.order < 0:
            outside += n
            continue
        if first < 0 or s.order == first:
            first, first_n = s.order, first_n + n
        if s.order != last:
            last, last_n = s.order, 0
        last_n += n
    return Adapter(specs=specs, params=total, first_block=first_n, last_block=last_n + outside)


@functools.lru_cache(maxsize=256)
def optimizer_memory(
    tokens: tuple[str, ...],
    arch: TransformerArch,
    rank: int,
    dora: bool,
    optimizer: str,
    momentum: float,
    weight_decay: float,
    kind: AdapterKind = LORA,
) -> tuple[float, float]:
    """(state, one step's temporaries) in bytes."""
    adapter = lora_adapter(tokens, arch, rank, dora, kind)
    per_tensor = optimizer in ("adamw8bit", "adafactor", "prodigy")
    tensors = _lora_tensors(adapter.specs, rank, dora, kind) if per_tensor else []
    return (
        _optimizer_state(tensors, adapter.params, optimizer, momentum),
        _optimizer_step(tensors, adapter.params, optimizer, momentum, weight_decay),
    )


@functools.lru_cache(maxsize=64)
def frozen_weights(arch: TransformerArch, dtype_bytes: int, quantization: str) -> float:
    total = weight_bytes(arch, dtype_bytes, quantization)
    if quantization != "none":
        # QLoRA dequantizes one layer's weight for its matmul: the largest one is a transient on top.
        total += _largest_linear(arch) * dtype_bytes
    return total


@functools.lru_cache(maxsize=64)
def _largest_linear(arch: TransformerArch) -> int:
    double, single = block_linears(arch)
    inside = (i * o for _, i, o in double + single)
    return max(*inside, *(s.in_features * s.out_features for s in outside_linears(arch)))


CACHES = (
    linears,
    transformer_params,
    target_specs,
    lora_adapter,
    optimizer_memory,
    frozen_weights,
    block_bytes,
    swap_table,
    _kinds,
    outside_linears,
    _largest_linear,
)
