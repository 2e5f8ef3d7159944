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
    out += _ema_rules(c)
    out += _adapter_type_rules(c)
    demo = is_demo(c.model.path)
    out += _swap_rules(c, demo)
    if demo and c.model.variant not in ("auto", "demo"):
        out.append(("model.variant", f"{c.model.variant!r} does not match model.path 'demo'"))
    if not demo and c.model.variant == "demo":
        out.append(("model.variant", "'demo' needs model.path 'demo'"))
    out += _reference_rules(c)
    out += _data_rules(c)
    out += [(f, m) for f, m, level in distributed_issues(c) if level == "error"]
    return out


def _ema_rules(c: TrainConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if c.validation.sample_ema and c.training.ema_decay == 0:
        out.append(("validation.sample_ema", "needs an EMA: set training.ema_decay (e.g. 0.999)"))
    if c.training.ema_decay > 0 and c.distributed.sharded:
        # The EMA lives whole on the main process; under FSDP that process holds only a shard of the LoRA.
        out.append(
            (
                "training.ema_decay",
                "an EMA of the LoRA is not available with distributed.strategy fsdp over several processes; "
                "use ddp, or set training.ema_decay to 0",
            )
        )
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


def _adapter_type_rules(c: TrainConfig) -> list[tuple[str, str]]:
    """lora.type lokr / loha: the settings that only mean something for a LoRA, and what is not built
    (or not checked) for them yet."""
    lora = c.lora
    out: list[tuple[str, str]] = []
    if lora.type != "lokr":
        if lora.lokr_factor:
            out.append(("lora.lokr_factor", f"only applies to lora.type lokr (this is {lora.type})"))
        if lora.lokr_decompose_both:
            out.append(("lora.lokr_decompose_both", f"only applies to lora.type lokr (this is {lora.type})"))
    if lora.type == "lora":
        return out
    kind = lora.type
    if lora.use_dora:
        out.append(("lora.use_dora", f"DoRA is a LoRA variant; {kind} has no DoRA form: turn one off"))
    if lora.dropout > 0:
        out.append(("lora.dropout", f"{kind} has no input dropout (LoRA's); set lora.dropout to 0"))
    # output.export_comfyui: every Linear a LoKr/LoHa can target has an exact ComfyUI key (training/export.py)
    if c.memory.quantization != "none":
        out.append(
            (
                "memory.quantization",
                f"{kind} is trained on unquantized weights only here (not built for "
                f"{c.memory.quantization}); use lora.type lora for QLoRA",
            )
        )
    if c.performance.float8:
        out.append(("performance.float8", f"not checked with {kind}; use lora.type lora or turn it off"))
    if c.distributed.sharded:
        out.append(("lora.type", f"{kind} is not checked under FSDP; use distributed.strategy ddp"))
    return out


def _data_rules(c: TrainConfig) -> list[tuple[str, str]]:
    """Masked loss, several datasets, preservation and disk caches (training/masks.py, training/mix.py, data/entries.py,
    training/preservation.py, data/disk_cache.py)."""
    ds, t, mem = c.dataset, c.training, c.memory
    out: list[tuple[str, str]] = []
    if ds.unmasked_weight > 0 and not ds.mask_path.strip():
        out.append(("dataset.unmasked_weight", "only applies with dataset.mask_path (masked loss)"))
    regularization = any(e.role == "regularization" for e in ds.extra)
    if t.preservation != "none" and not regularization:
        out.append(
            (
                "training.preservation",
                f"{t.preservation} needs regularization images: add a dataset.extra entry with "
                "role: regularization",
            )
        )
    for n, e in enumerate(ds.extra):
        if e.path.strip() == ds.path.strip():
            out.append((f"dataset.extra[{n}].path", "is dataset.path itself: each dataset once"))
        elif any(e.path.strip() == o.path.strip() for o in ds.extra[:n]):
            out.append((f"dataset.extra[{n}].path", "is another entry's path: each dataset once"))
    if t.preservation == "prior_prediction" and c.distributed.sharded:
        # The base prediction runs the sharded model with its adapter off: not built under FSDP.
        out.append(("training.preservation", "prior_prediction is not available under FSDP; use ddp"))
    if mem.cache_to_disk and not (mem.cache_latents or mem.cache_text_embeddings):
        out.append(
            (
                "memory.cache_to_disk",
                "caches nothing with memory.cache_latents and memory.cache_text_embeddings both off",
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
