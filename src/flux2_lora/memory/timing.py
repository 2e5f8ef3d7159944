"""Seconds per training step, roughly, from the architecture and a GPU class (pure Python, no torch).

What it is for: saying what a memory fix costs in time ("−X GiB, about +Y% time"), so the ratios matter
more than the absolute figure. The model:

- compute: the matrix products of every block (2 FLOPs per weight per token it sees; double blocks' image
  Linears see the image tokens, their context Linears the text tokens, single blocks both) and attention
  (4 · tokens² · inner dim per block), forward once, backward once more for the Linears (input gradients
  only: the base weights are frozen) and 2.5 × for attention, plus one more forward with gradient
  checkpointing (its recomputation), times the batch; over the card's dense BF16 TFLOPS at
  :data:`EFFICIENCY`. Quantized weights are dequantized per matmul: :data:`DEQUANT_FACTOR`.
- block swap: each swapped block is copied host→GPU once in forward and once in backward
  (:class:`flux2_lora.memory.static.Swap`), at the card's host bandwidth (memory/gpus.py). With two
  buffers a block's copy overlaps the compute of the block before it in that pass's order, so a pass
  takes Σ max(compute of block i, copy of block i + 1), plus the first swapped block's copy in backward,
  which nothing hides.

Not counted: the optimizer step, data loading, validation sampling (minor for LoRA).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from flux2_lora.config import TrainConfig
from flux2_lora.memory.estimate import resolve_shapes
from flux2_lora.memory.gpus import Gpu, speed_of
from flux2_lora.memory.static import block_bytes, block_swap
from flux2_lora.targets import block_linears
from flux2_lora.variants import TransformerArch

# Achieved / peak FLOPS: calibrated on benchmarks/vram/measured.json's FLUX.2 [dev] row (bf16, 1024²,
# LoRA r16, checkpointing) on an H200: 2.17 s/step measured (the mean of its steps 2-3, with other runs
# sharing the GPU, so a pessimistic figure) against the FLOPs counted here at 989 TFLOPS.
EFFICIENCY = 0.415
# Step time × this for quantized base weights (dequantized per matmul). nf4: the same [dev] rows (2.78 s
# against 2.17 s); int8 and fp8: not measured on [dev] (torchao int8 was slower than nf4 on [klein] 9B;
# fp8 is a cast and a row scale, no bitsandbytes kernel): assumed.
DEQUANT_FACTOR = {"none": 1.0, "fp8": 1.15, "int8": 1.5, "nf4": 1.28}
ATTENTION_BACKWARD = 2.5


@dataclass(frozen=True)
class StepTime:
    compute_s: float  # the block compute of one step, no transfers
    transfer_s: float  # the swap copies of one step, were nothing overlapped
    step_s: float  # the step with the copies overlapped
    gb_per_step: float  # GB copied host→GPU per step

    @property
    def exposed_s(self) -> float:
        return self.step_s - self.compute_s


@functools.lru_cache(maxsize=64)
def _block_weights(arch: TransformerArch) -> tuple[tuple[int, int, int], ...]:
    """Per block in execution order: the Linear weights that see the image tokens, the text tokens and
    both (single-stream blocks). Integers, so the FLOPs below are exact whatever the summation order."""
    double, single = block_linears(arch)
    w = [0, 0]
    for name, i, o in double:
        context = name.startswith(("attn.add_", "attn.to_add_out", "ff_context."))
        w[context] += i * o
    return ((w[0], w[1], 0),) * arch.num_layers + (
        (0, 0, sum(i * o for _, i, o in single)),
    ) * arch.num_single_layers


@functools.lru_cache(maxsize=256)
def block_flops(arch: TransformerArch, img: int, txt: int) -> tuple[tuple[float, float], ...]:
    """(Linear FLOPs, attention FLOPs) of one forward of every block in execution order, batch 1."""
    attention = 4.0 * (img + txt) ** 2 * arch.inner_dim
    return tuple(
        (2.0 * (w_img * img + w_txt * txt + w_both * (img + txt)), attention)
        for w_img, w_txt, w_both in _block_weights(arch)
    )


def _pass(compute: list[float], copies: list[float], exposed_first: bool) -> float:
    """One pass over the blocks in its order: block i + 1's copy overlaps block i's compute."""
    total = copies[0] if exposed_first else 0.0
    for i, c in enumerate(compute):
        nxt = copies[i + 1] if i + 1 < len(copies) else 0.0
        total += max(c, nxt)
    return total


def step_time(config: TrainConfig, gpu: float | Gpu) -> StepTime:
    """Seconds of one training step on ``gpu`` (a card, or a memory size: its class's speed)."""
    g = speed_of(gpu)
    sh = resolve_shapes(config)
    mem = config.memory
    fsdp = config.distributed.strategy == "fsdp" and config.distributed.world_size > 1
    return _step_time(
        sh.arch,
        sh.weight_bytes,
        sh.image_tokens,
        sh.text_tokens,
        config.training.batch_size,
        mem.gradient_checkpointing,
        mem.quantization,
        0 if fsdp else mem.blocks_to_swap,
        g.bf16_tflops,
        g.host_gbs,
    )


@functools.lru_cache(maxsize=1024)
def _step_time(
    arch: TransformerArch,
    wb: int,
    img: int,
    txt: int,
    batch: int,
    checkpointing: bool,
    quantization: str,
    swapped: int,
    tflops: float,
    host_gbs: float,
) -> StepTime:
    flops_per_s = tflops * 1e12 * EFFICIENCY / DEQUANT_FACTOR.get(quantization, 1.0)
    fwd, bwd = [], []
    for lin, att in block_flops(arch, img, txt):
        f = (lin + att) * batch / flops_per_s
        fwd.append(f)
        bwd.append((lin + ATTENTION_BACKWARD * att) * batch / flops_per_s + (f if checkpointing else 0.0))
    compute = sum(fwd) + sum(bwd)
    n = block_swap(arch, wb, quantization, swapped).blocks
    if not n:
        return StepTime(compute, 0.0, compute, 0.0)
    sizes = block_bytes(arch, wb, quantization)
    copy = [0.0] * (len(sizes) - n) + [b / (host_gbs * 1e9) for b in sizes[len(sizes) - n :]]
    forward = _pass(fwd, copy, exposed_first=False)
    # Backward runs the blocks in reverse, so it starts with the swapped ones.
    backward = _pass(bwd[::-1], copy[::-1], exposed_first=True)
    gb = 2.0 * sum(sizes[len(sizes) - n :]) / 1e9
    return StepTime(compute, 2.0 * sum(copy), forward + backward, gb)
