"""The memory model's training phase: exact LoRA counts, estimate vs traced peak, settings, no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux2_lora.memory import estimate
from flux2_lora.targets import TARGET_SETS
from flux2_lora.variants import VARIANTS

from .matrix import HUB, MATRIX, config, row_id, training_phase_on


@pytest.mark.parametrize("variant", ["dev", "klein-4b", "klein-9b", "demo"])
@pytest.mark.parametrize("targets", [*TARGET_SETS, "attn.to_q,ff.linear_out", "single_transformer_blocks.1*"])
def test_lora_counts_equal_peft_on_a_meta_model(variant: str, targets: str) -> None:
    import torch
    from diffusers import Flux2Transformer2DModel

    from flux2_lora.config import LoraSection
    from flux2_lora.training.model import inject_lora

    arch = VARIANTS[variant].transformer
    dora = targets in ("single", "all-linear")
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**arch.diffusers_config())
        model.requires_grad_(False)
        lora = LoraSection(rank=8, alpha=8, target_modules=targets.split(","), use_dora=dora)
        peft_count = inject_lora(model, lora, arch)
    assert peft_count == sum(p.numel() for p in model.parameters() if p.requires_grad)
    path = "demo" if variant == "demo" else HUB[variant]
    c = config(
        f"model.path={path}",
        f"lora.target_modules=[{targets}]",
        "lora.rank=8",
        "lora.alpha=8",
        f"lora.use_dora={str(dora).lower()}",
        variant="klein-4b",
    )
    assert estimate(c).trainable_params == peft_count


@pytest.mark.parametrize("row", MATRIX, ids=[row_id(r) for r in MATRIX])
def test_analytic_training_peak_within_3_percent_of_trace(row: list[str]) -> None:
    from flux2_lora.training.trace import reduced, trace_training_step

    c = config(*row)
    arch = reduced(VARIANTS["klein-4b"].transformer, 2, 3)
    traced = trace_training_step(c, arch)["peak_gib"]
    assert abs(training_phase_on(c, arch) - traced) / traced < 0.03


def test_identical_blocks_compose_linearly() -> None:
    """The trace of a deeper model is the shallow trace plus per-block increments (what the estimate sums)."""
    from flux2_lora.training.trace import reduced, trace_training_step

    c = config("dataset.resolution=512", "memory.gradient_checkpointing=false")
    base = VARIANTS["klein-9b"].transformer
    t = {n: trace_training_step(c, reduced(base, n, n))["peak_gib"] for n in (1, 2, 3)}
    assert abs((t[3] - t[2]) - (t[2] - t[1])) / (t[2] - t[1]) < 0.01
    assert abs(training_phase_on(c, reduced(base, 3, 3)) - t[3]) / t[3] < 0.03


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "overrides"),
    [
        ("klein-4b", ["memory.gradient_checkpointing=false", "lora.target_modules=[ff.linear_in]"]),
        ("klein-9b", ["memory.quantization=nf4", "lora.rank=64", "training.optimizer=adamw8bit"]),
        ("dev", ["lora.use_dora=true", "memory.quantization=nf4"]),
    ],
)
def test_full_depth_models_within_3_percent_of_trace(variant: str, overrides: list[str]) -> None:
    from flux2_lora.training.trace import trace_training_step

    c = config(*overrides, variant=variant)
    traced = trace_training_step(c)["peak_gib"]
    assert abs(estimate(c, kernels="trace").phases["training"] - traced) / traced < 0.03


def _training(*overrides: str, variant: str = "klein-4b") -> dict[str, float]:
    return estimate(config(*overrides, variant=variant)).phase_components["training"]


def test_settings_move_the_estimate_the_right_way() -> None:
    base = _training("memory.gradient_checkpointing=false")
    assert _training("memory.gradient_checkpointing=true")["activations"] < base["activations"] / 3
    nf4, int8 = _training("memory.quantization=nf4"), _training("memory.quantization=int8")
    assert nf4["weights"] < int8["weights"] < base["weights"]
    assert (
        estimate(config("lora.rank=64")).trainable_params
        == 4 * estimate(config("lora.rank=16")).trainable_params
    )
    assert _training("training.optimizer=sgd")["optimizer"] == 0  # no momentum, no weight decay: no state
    assert _training("training.optimizer=adamw8bit")["optimizer"] < _training()["optimizer"] / 3
    assert _training("memory.cache_text_embeddings=false")["text_encoder"] > 7
    assert _training("memory.cache_text_embeddings=false", "memory.cpu_offload=true")["text_encoder"] == 0
    assert _training("memory.cache_latents=false")["vae"] > 0
    assert (
        _training("dataset.resolution=1536")["activations"]
        > _training("dataset.resolution=1024")["activations"]
    )
    assert _training("training.batch_size=4")["activations"] > 3 * _training()["activations"]
    assert _training("lora.use_dora=true")["activations"] > _training()["activations"]
    assert _training("model.dtype=float32")["weights"] == pytest.approx(2 * _training()["weights"], rel=1e-3)


def test_data_parallel_processes_hold_gradient_buckets() -> None:
    c = config()
    one, four = estimate(c), estimate(c, num_processes=4)
    lora = one.phase_components["training"]["lora"]  # fp32 adapter: the buckets are the same size
    assert four.phase_components["training"]["gradients"] - one.phase_components["training"]["gradients"] == (
        pytest.approx(lora)
    )
    assert four.total_gib > one.total_gib and any("4 GPUs" in n for n in four.notes)


def test_components_add_up_to_the_total_and_name_the_peak_phase() -> None:
    for c in (config(), config("memory.quantization=nf4"), config(variant="dev")):
        e = estimate(c)
        assert sum(e.components.values()) == pytest.approx(e.total_gib)
        assert e.allocated_peak_gib == max(e.phases.values()) == e.phases[e.peak_phase]
    # klein-4b in NF4 trains in less memory than its bf16 Qwen3-4B needs while encoding captions.
    assert estimate(config("memory.quantization=nf4")).peak_phase == "caching"


def test_a_local_folder_is_sized_from_its_own_config(tmp_path: Path) -> None:
    import json

    arch = VARIANTS["klein-4b"].transformer
    folder = tmp_path / "my-model"
    (folder / "transformer").mkdir(parents=True)
    cfg = {**arch.diffusers_config(), "num_single_layers": 10, "_class_name": "Flux2Transformer2DModel"}
    (folder / "transformer" / "config.json").write_text(json.dumps(cfg))
    (folder / "model_index.json").write_text("{}")
    local = estimate(config(f"model.path={folder}", "model.variant=auto"))
    table = estimate(config())
    assert local.trainable_params < table.trainable_params  # 10 single blocks instead of 20
    assert local.phase_components["training"]["weights"] < table.phase_components["training"]["weights"]
