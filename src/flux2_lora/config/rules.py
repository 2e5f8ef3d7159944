"""The schema's cross-field rules (pure: no file system, no torch). TrainConfig's validator runs them, so
every config that exists obeys them, however it was built (YAML, the UI's form, ``model_validate``, an
update through :func:`flux2_lora.config.io.with_updates`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flux2_lora.variants import is_demo

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
        out.append(
            (
                "performance.float8",
                f"cannot run FP8 matrix products on {c.memory.quantization} weights; turn off one of "
                "performance.float8 and memory.quantization",
            )
        )
    demo = is_demo(c.model.path)
    if demo and c.model.variant not in ("auto", "demo"):
        out.append(("model.variant", f"{c.model.variant!r} does not match model.path 'demo'"))
    if not demo and c.model.variant == "demo":
        out.append(("model.variant", "'demo' needs model.path 'demo'"))
    out += _reference_rules(c)
    out += [(f, m) for f, m, level in distributed_issues(c) if level == "error"]
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
