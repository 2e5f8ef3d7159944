"""Configurations on which the analytic estimate is checked against the meta-tensor trace.

Shared by tests/memory and benchmarks/estimate_vs_trace.py. Each row is a list of ``--set`` overrides
on a klein-4b config; reduced depth (2 double + 3 single blocks) keeps each trace under a second, and
tests/memory checks that blocks compose linearly and one full-depth model per variant.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import load_config

E: Any = importlib.import_module("flux2_lora.memory.estimate")  # the module (the package exports a function)

HUB = {
    "dev": "black-forest-labs/FLUX.2-dev",
    "klein-4b": "black-forest-labs/FLUX.2-klein-base-4B",
    "klein-9b": "black-forest-labs/FLUX.2-klein-base-9B",
}


def _row(
    dtype: str, targets: str, res: int, gc: bool, batch: int, rank: int, opt: str, *extra: str
) -> list[str]:
    return [
        f"model.dtype={dtype}",
        f"lora.target_modules=[{targets}]",
        f"dataset.resolution={res}",
        f"memory.gradient_checkpointing={str(gc).lower()}",
        f"training.batch_size={batch}",
        f"lora.rank={rank}",
        f"lora.alpha={rank}",
        f"training.optimizer={opt}",
        "training.learning_rate=1e-4",
        *extra,
    ]


# dtype, targets, resolution, checkpointing, batch, rank, optimizer, further overrides
MATRIX: list[list[str]] = [
    _row("bfloat16", "default", 512, False, 1, 16, "adamw"),
    _row("bfloat16", "default", 512, True, 1, 16, "adamw"),
    _row("bfloat16", "all-linear", 1024, False, 2, 64, "adamw"),
    _row("bfloat16", "single", 768, True, 1, 8, "sgd"),
    _row("float32", "default", 512, False, 1, 16, "adamw"),
    _row("bfloat16", "double-attn", 1024, True, 4, 128, "adafactor"),
    _row("float32", "all-attention", 256, True, 2, 32, "adamw"),
    _row("bfloat16", "double-ff", 768, False, 1, 32, "prodigy"),
    _row("float32", "double-ff", 512, True, 1, 16, "adamw"),
    _row("bfloat16", "all-linear", 1536, True, 1, 64, "adamw"),
    _row("float32", "single", 1024, False, 1, 16, "sgd"),
    _row("bfloat16", "double-attn-context", 1024, True, 2, 16, "adamw"),
    _row("bfloat16", "default", 1024, False, 1, 16, "adamw8bit"),
    _row("bfloat16", "double-attn-context", 512, False, 2, 16, "adamw"),
    # DoRA: kept magnitudes' inputs, the dense weight of the widest layer, fp32 gradients.
    _row("bfloat16", "default", 1024, True, 1, 16, "adamw", "lora.use_dora=true"),
    _row("bfloat16", "double-ff", 768, False, 2, 16, "adamw", "lora.use_dora=true"),
    _row("float32", "all-linear", 512, False, 1, 16, "adamw", "lora.use_dora=true"),
    _row("bfloat16", "single", 1536, True, 1, 16, "adamw", "lora.use_dora=true"),
    # Quantized weights (their storage emulated in the trace as bitsandbytes / torchao lay it out).
    _row("bfloat16", "default", 1024, True, 1, 64, "adamw8bit", "memory.quantization=nf4"),
    _row(
        "bfloat16",
        "all-attention",
        768,
        False,
        1,
        16,
        "prodigy",
        "memory.quantization=int8",
        "training.learning_rate=1.0",
    ),
    # Hand-picked layers: where each stream's first LoRA layer sits decides what the first block keeps.
    _row("bfloat16", "ff.linear_in", 1024, False, 1, 16, "adamw"),
    _row("bfloat16", "attn.to_q,ff_context.linear_in", 768, False, 1, 16, "adamw"),
    # Large adapter at a small resolution: the optimizer step, not backward, is the peak.
    _row("bfloat16", "all-linear", 256, True, 1, 256, "adamw"),
    _row("bfloat16", "all-linear", 256, True, 1, 256, "sgd", "training.momentum=0.9"),
    # Gradient accumulation: every gradient lives through the later micro-batches' backward.
    _row("bfloat16", "all-linear", 512, False, 1, 128, "adamw", "training.gradient_accumulation_steps=2"),
]


def row_id(row: list[str]) -> str:
    return " ".join(
        o.split("=", 1)[1] for o in row if not o.startswith(("lora.alpha", "training.learning_rate"))
    )


def config(*overrides: str, variant: str = "klein-4b") -> TrainConfig:
    c, _ = load_config(overrides=[f"model.path={HUB[variant]}", "model.dtype=bfloat16", *overrides])
    return c


def training_phase_on(config: TrainConfig, arch: Any) -> float:
    """The analytic training-phase peak (GiB) of ``config`` with another transformer shape."""
    original = E.resolve_shapes
    E.resolve_shapes = lambda c: dataclasses.replace(original(c), arch=arch)
    try:
        return float(E.estimate(config, kernels="trace").phases["training"])
    finally:
        E.resolve_shapes = original
