"""The schema's cross-field rules (pure: no file system, no torch). TrainConfig's validator runs them, so
every config that exists obeys them, however it was built (YAML, the UI's form, ``model_validate``, an
update through :func:`flux2_lora.config.io.with_updates`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flux2_lora.variants import blocks_to_swap_error, get_variant, is_demo

if TYPE_CHECKING:
    from flux2_lora.config.schema import TrainConfig


def config_rules(c: TrainConfig) -> list[tuple[str, str]]:
    """(field, message) for every combination of values that cannot run."""
    from flux2_lora.config.distributed import distributed_issues

    out: list[tuple[str, str]] = []
    t = c.training
    if t.warmup_steps > t.max_steps:
        out.append(
            (
                "training.warmup_steps",
                f"{t.warmup_steps} warmup steps exceed training.max_steps ({t.max_steps})",
            )
        )
    if c.performance.float8 and c.memory.quantization != "none":
        fp8 = c.memory.quantization == "fp8"
        out.append(
            (
                "performance.float8",
                f"cannot run FP8 matrix products on {c.memory.quantization} weights"
                + (
                    " (memory.quantization fp8 stores the weights in float8 and computes in model.dtype; "
                    "performance.float8 computes in float8 from model.dtype weights: choose storage or speed)"
                    if fp8
                    else ""
                )
                + "; turn off one of performance.float8 and memory.quantization",
            )
        )
    demo = is_demo(c.model.path)
    out += _swap_rules(c, demo)
    if demo and c.model.variant not in ("auto", "demo"):
        out.append(("model.variant", f"{c.model.variant!r} does not match model.path 'demo'"))
    if not demo and c.model.variant == "demo":
        out.append(("model.variant", "'demo' needs model.path 'demo'"))
    out += _reference_rules(c)
    out += [(f, m) for f, m, level in distributed_issues(c) if level == "error"]
    return out


def _swap_rules(c: TrainConfig, demo: bool) -> list[tuple[str, str]]:
    """memory.blocks_to_swap: what training/block_swap.py can stream (a variant auto is checked at
    trainer setup, once the model's own config is read, with the same words)."""
    m = c.memory
    n = m.blocks_to_swap
    if n == 0:
        return []
    out: list[tuple[str, str]] = []
    variant = "demo" if demo else c.model.variant
    if variant != "auto":
        v = get_variant(variant)
        why = blocks_to_swap_error(n, v.transformer, v.label)
        if why:
            out.append(("memory.blocks_to_swap", why))
    if not m.gradient_checkpointing:
        out.append(
            (
                "memory.blocks_to_swap",
                "needs memory.gradient_checkpointing: a swapped block is copied in again for its "
                "recomputation in backward, instead of its weights being held for the whole step",
            )
        )
    if m.quantization == "int8":
        out.append(
            (
                "memory.blocks_to_swap",
                "cannot stream torchao's int8 weights (their data lives in sub-tensors); use "
                "memory.quantization fp8 or nf4 with block swap",
            )
        )
    if c.performance.compile:
        out.append(
            (
                "memory.blocks_to_swap",
                "cannot run with performance.compile (the swap's hooks run between compiled blocks and move "
                "their weights); turn one of them off",
            )
        )
    if c.distributed.world_size > 1:
        out.append(
            (
                "memory.blocks_to_swap",
                "streams blocks for one process; with several GPUs use distributed.strategy fsdp (it "
                "shards the blocks, with distributed.fsdp_cpu_offload for host memory)",
            )
        )
    return out


def _reference_rules(c: TrainConfig) -> list[tuple[str, str]]:
    """Edit LoRAs: validation references per prompt, their count per variant, the size cap's floor."""
    from flux2_lora.data.references import MIN_REFERENCE_SIDE, count_problem
    from flux2_lora.variants import VARIANTS

    out: list[tuple[str, str]] = []
    ds, val = c.dataset, c.validation
    floor = MIN_REFERENCE_SIDE * MIN_REFERENCE_SIDE
    if 0 < ds.reference_max_pixels < floor:
        out.append(
            (
                "dataset.reference_max_pixels",
                f"{ds.reference_max_pixels} pixels is below {MIN_REFERENCE_SIDE}², the smallest reference "
                "FLUX.2 takes; 0 follows its own caps",
            )
        )
    prompts = len(val.prompts) or 1  # no prompts: the first caption is the one prompt
    if len(val.references) > prompts:
        out.append(
            (
                "validation.references",
                f"{len(val.references)} reference lists for {prompts} validation prompt(s); give one list "
                "per prompt, in the prompts' order",
            )
        )
    # The variant is known without the file system when it is named, or the model is the demo.
    variant = "demo" if is_demo(c.model.path) else c.model.variant
    if variant in VARIANTS:
        v = VARIANTS[variant]
        for n, refs in enumerate(val.references):
            why = count_problem(len(refs), v.max_references, v.label)
            if why:
                out.append((f"validation.references[{n}]", why.replace("a target has", "lists")))
    return out
