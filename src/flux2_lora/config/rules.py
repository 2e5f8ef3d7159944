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
    out += _ema_rules(c)
    out += _adapter_type_rules(c)
    demo = is_demo(c.model.path)
    if demo and c.model.variant not in ("auto", "demo"):
        out.append(("model.variant", f"{c.model.variant!r} does not match model.path 'demo'"))
    if not demo and c.model.variant == "demo":
        out.append(("model.variant", "'demo' needs model.path 'demo'"))
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
    if c.output.export_comfyui:
        out.append(
            (
                "output.export_comfyui",
                f"no ComfyUI export for {kind} yet (its file keeps PEFT's key names); turn it off",
            )
        )
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
