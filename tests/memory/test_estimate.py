"""The memory model: exact LoRA counts, estimate vs traced peak, recommendations that fit, no torch."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import pytest

from flux2_lora.config_io import apply_overrides, load_config, to_dict, validate_dict
from flux2_lora.memory import GPUS, auto_fit, estimate, estimate_report, verdict
from flux2_lora.targets import TARGET_SETS
from flux2_lora.variants import VARIANTS

E = importlib.import_module(
    "flux2_lora.memory.estimate"
)  # the module (the package exports a function of that name)

HUB = {
    "dev": "black-forest-labs/FLUX.2-dev",
    "klein-4b": "black-forest-labs/FLUX.2-klein-base-4B",
    "klein-9b": "black-forest-labs/FLUX.2-klein-base-9B",
}


def cfg(*overrides: str, variant: str = "klein-4b"):  # type: ignore[no-untyped-def]
    c, _ = load_config(overrides=[f"model.path={HUB[variant]}", "model.dtype=bfloat16", *overrides])
    return c


@pytest.mark.parametrize("variant", ["dev", "klein-4b", "klein-9b", "demo"])
@pytest.mark.parametrize("targets", list(TARGET_SETS))
def test_lora_counts_equal_peft_on_a_meta_model(variant, targets):  # type: ignore[no-untyped-def]
    import torch
    from diffusers import Flux2Transformer2DModel

    from flux2_lora.config import LoraSection
    from flux2_lora.model import inject_lora

    arch = VARIANTS[variant].transformer
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**arch.diffusers_config())
        model.requires_grad_(False)
        lora = LoraSection(rank=8, alpha=8, target_modules=[targets], use_dora=targets == "single")
        peft_count = inject_lora(model, lora, arch)
    c = load_config(
        overrides=[
            "model.path=demo" if variant == "demo" else f"model.path={HUB[variant]}",
            f"lora.target_modules=[{targets}]",
            "lora.rank=8",
            "lora.alpha=8",
            f"lora.use_dora={'true' if targets == 'single' else 'false'}",
        ]
    )[0]
    assert estimate(c).trainable_params == peft_count


# A matrix over dtype, targets, resolution, checkpointing, batch, rank and optimizer; reduced depth
# (2 double + 3 single blocks) keeps each trace under a second.
MATRIX = [
    ("bfloat16", "default", 512, "false", 1, 16, "adamw"),
    ("bfloat16", "default", 512, "true", 1, 16, "adamw"),
    ("bfloat16", "all-linear", 1024, "false", 2, 64, "adamw"),
    ("bfloat16", "single", 768, "true", 1, 8, "sgd"),
    ("float32", "default", 512, "false", 1, 16, "adamw"),
    ("bfloat16", "double-attn", 1024, "true", 4, 128, "adafactor"),
    ("float32", "all-attention", 256, "true", 2, 32, "adamw"),
    ("bfloat16", "double-ff", 768, "false", 1, 32, "prodigy"),
    ("float32", "double-ff", 512, "true", 1, 16, "adamw"),
    ("bfloat16", "all-linear", 1536, "true", 1, 64, "adamw"),
    ("float32", "single", 1024, "false", 1, 16, "sgd"),
    ("bfloat16", "double-attn-context", 1024, "true", 2, 16, "adamw"),
    ("bfloat16", "default", 1024, "false", 1, 16, "adamw8bit"),
    ("bfloat16", "double-attn-context", 512, "false", 2, 16, "adamw"),
]


def matrix_config(dtype, targets, res, gc, batch, rank, opt):  # type: ignore[no-untyped-def]
    """The config of one MATRIX row (also used by benchmarks/estimate_vs_trace.py)."""
    return cfg(
        f"model.dtype={dtype}",
        f"lora.target_modules=[{targets}]",
        f"dataset.resolution={res}",
        f"memory.gradient_checkpointing={gc}",
        f"training.batch_size={batch}",
        f"lora.rank={rank}",
        f"lora.alpha={rank}",
        f"training.optimizer={opt}",
        "training.learning_rate=1e-4",
    )


def _on_arch(config, arch):  # type: ignore[no-untyped-def]
    original = E.resolve_shapes
    E.resolve_shapes = lambda c: dataclasses.replace(original(c), arch=arch)  # type: ignore[assignment]
    try:
        return estimate(config).phases["training"]
    finally:
        E.resolve_shapes = original


@pytest.mark.parametrize(("dtype", "targets", "res", "gc", "batch", "rank", "opt"), MATRIX)
def test_analytic_training_peak_within_3_percent_of_trace(dtype, targets, res, gc, batch, rank, opt):  # type: ignore[no-untyped-def]
    from flux2_lora.memory.trace import reduced, trace_training_step

    c = matrix_config(dtype, targets, res, gc, batch, rank, opt)
    arch = reduced(VARIANTS["klein-4b"].transformer, 2, 3)
    traced = trace_training_step(c, arch)["peak_gib"]
    assert abs(_on_arch(c, arch) - traced) / traced < 0.03


def test_composition_identical_blocks_add_linearly():  # type: ignore[no-untyped-def]
    """The trace of a deeper model equals the shallow trace plus per-block increments (what the estimate sums)."""
    from flux2_lora.memory.trace import reduced, trace_training_step

    c = cfg("dataset.resolution=512", "memory.gradient_checkpointing=false")
    base = VARIANTS["klein-9b"].transformer
    t = {n: trace_training_step(c, reduced(base, n, n))["peak_gib"] for n in (1, 2, 3)}
    assert abs((t[3] - t[2]) - (t[2] - t[1])) / (t[2] - t[1]) < 0.01
    assert abs(_on_arch(c, reduced(base, 3, 3)) - t[3]) / t[3] < 0.03


@pytest.mark.parametrize("preset", ["dev", "klein-9b", "klein-4b"])
@pytest.mark.parametrize("gpu", [g.name for g in GPUS[:5]])
def test_every_recommendation_makes_it_fit(preset, gpu):  # type: ignore[no-untyped-def]
    c, _ = load_config(
        presets=[preset], overrides=["training.batch_size=2", "memory.gradient_checkpointing=false"]
    )
    report = estimate_report(c, gpu=gpu)
    gib = report["gpu"]["gib"]
    for rec in report["recommendations"]:
        data, issues = apply_overrides(to_dict(c), [f"{k}={v}" for k, v in rec["overrides"].items()])
        fixed, problems = validate_dict(data)
        assert fixed is not None and not issues
        assert verdict(estimate(fixed).total_gib, gib) == "fits", rec
    fitted = auto_fit(c, gib)
    if fitted is not None:
        assert verdict(estimate(fitted).total_gib, gib) == "fits"


def test_settings_move_the_estimate_the_right_way():  # type: ignore[no-untyped-def]
    base = estimate(cfg("memory.gradient_checkpointing=false"))
    assert (
        estimate(cfg("memory.gradient_checkpointing=true")).components["activations"]
        < base.components["activations"]
    )
    assert (
        estimate(cfg("memory.quantization=nf4")).components["weights"]
        < estimate(cfg("memory.quantization=int8")).components["weights"]
        < base.components["weights"]
    )
    assert (
        estimate(cfg("lora.rank=64", "lora.alpha=64")).trainable_params
        == 4 * estimate(cfg("lora.rank=16")).trainable_params
    )
    assert estimate(cfg("training.optimizer=sgd")).components["optimizer"] == 0
    assert estimate(cfg("memory.cache_text_embeddings=false")).components["text_encoder"] > 7
    assert (
        estimate(cfg("dataset.resolution=1536")).components["activations"]
        > estimate(cfg("dataset.resolution=1024")).components["activations"]
    )
    assert (
        estimate(cfg("training.batch_size=4")).components["activations"]
        > 3 * estimate(cfg()).components["activations"]
    )


def test_memory_package_imports_no_torch():  # type: ignore[no-untyped-def]
    code = (
        "import sys, flux2_lora.memory as m; from flux2_lora.config import TrainConfig; "
        "m.estimate_report(TrainConfig()); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"
