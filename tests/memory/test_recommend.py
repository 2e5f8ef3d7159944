"""Recommendations and auto-fit: each fits the GPU it was made for, is minimal, and costs least first."""

from __future__ import annotations

from typing import Any

import pytest

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import apply_overrides, load_config, to_dict, validate_dict
from flux2_lora.memory import GPUS, auto_fit, estimate, estimate_report, recommendations, verdict
from flux2_lora.memory.host import gpu_host_peak

VARIATIONS = [
    [],
    ["training.batch_size=2", "memory.gradient_checkpointing=false"],
    ["lora.rank=128", "lora.alpha=128", "lora.use_dora=true", "dataset.resolution=1536"],
    ["memory.cache_text_embeddings=false", "memory.cache_latents=false", "training.optimizer=prodigy"],
    [
        "model.dtype=float32",
        "dataset.resolution=2048",
        "training.learning_rate=1.0",
        "training.optimizer=prodigy",
    ],
]


def _apply(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """As `flux2-lora estimate --set k=v` would apply them."""
    data, issues = apply_overrides(to_dict(config), [f"{k}={v}" for k, v in overrides.items()])
    fixed, problems = validate_dict(data)
    assert fixed is not None and not issues, (issues, problems)
    return fixed


@pytest.mark.parametrize("preset", ["dev", "klein-9b", "klein-4b"])
@pytest.mark.parametrize(
    "variation", VARIATIONS, ids=["preset", "batch2-nogc", "dora-r128-1536", "uncached-prodigy", "fp32-2048"]
)
def test_every_recommendation_fits_and_is_minimal(preset: str, variation: list[str]) -> None:
    c, _ = load_config(presets=[preset], overrides=variation)
    for gpu in GPUS[:6]:
        report = estimate_report(c, gpu=gpu.name)
        recs = report["recommendations"]
        if verdict(report["total_gib"], gpu.gib) == "fits":
            assert recs == []
            continue
        assert recs, f"no recommendation for {gpu.name}"
        for rec in recs:
            fixed = _apply(c, rec["overrides"])
            total = estimate(fixed).total_gib
            assert (verdict(total, gpu.gib) == "fits") == rec["fits_after"], rec  # else tight or does_not_fit
            assert rec["total_gib_after"] == pytest.approx(total)
            assert rec["saves_gib"] == pytest.approx(report["total_gib"] - total)
            if not rec["fits_after"]:
                continue
            for dropped in rec["moves"]:
                rest = {k: v for m in rec["moves"] if m is not dropped for k, v in m["overrides"].items()}
                # Minimal for the GPU and the host RAM the report assumes (block swap streams the weights
                # into place: dropping it can put the loading peak over the host RAM).
                smaller = _apply(c, rest)
                est = estimate(smaller)
                fits = (
                    verdict(est.total_gib, gpu.gib) == "fits"
                    and gpu_host_peak(smaller, est) <= report["host_gib"]
                )
                assert not fits, (rec["title"], dropped)
        fitted = auto_fit(c, gpu.gib)
        # auto_fit keeps the GPU count: fixes that add GPUs (FSDP over more of them) are only listed.
        same_gpus = [r for r in recs if "distributed.num_processes" not in r["overrides"]]
        if any(r["fits_after"] for r in same_gpus):
            assert fitted is not None
        if not any(r["fits_after"] for r in recs):
            assert fitted is None
        if fitted is not None:
            assert verdict(estimate(fitted).total_gib, gpu.gib) == "fits"


def test_auto_fit_prefers_quality() -> None:
    # klein-9b in bf16 is tight on a 24 GB card: 8-bit AdamW state is enough, so neither a quantized
    # base nor a lower resolution is used.
    c, _ = load_config(presets=["klein-9b"])
    fitted = auto_fit(c, 23.99)
    # Swapping a few blocks to host RAM trains the same LoRA (about +0% time here): it comes before
    # 8-bit optimizer state (issue 21).
    assert fitted is not None and fitted.memory.blocks_to_swap > 0 and fitted.training.optimizer == "adamw"
    assert fitted.memory.quantization == "none"
    assert fitted.dataset.resolution == 1024 and fitted.lora.rank == c.lora.rank
    # Checkpointing and accumulation are tried before anything that touches the LoRA.
    c, _ = load_config(
        presets=["klein-4b"], overrides=["training.batch_size=4", "memory.gradient_checkpointing=false"]
    )
    fitted = auto_fit(c, 23.99)
    assert fitted is not None and fitted.memory.gradient_checkpointing
    assert (fitted.lora, fitted.dataset, fitted.memory.quantization) == (c.lora, c.dataset, "none")
    assert fitted.training.optimizer == c.training.optimizer and fitted.validation == c.validation
    # [dev] on 48 GB (no host budget given): the text encoder must encode on the CPU, and block swap keeps
    # the bf16 weights (no quantization at all, issue 21); rank and resolution kept.
    c, _ = load_config(presets=["dev"], overrides=["lora.rank=64", "lora.alpha=64"])
    fitted = auto_fit(c, 47.99)
    assert fitted is not None and fitted.memory.cpu_offload and fitted.memory.quantization == "none"
    assert fitted.memory.blocks_to_swap > 0
    assert fitted.lora.rank == 64 and fitted.dataset.resolution == c.dataset.resolution
    # Nothing fits [dev] on a 16 GB card.
    assert auto_fit(c, 16.0) is None
    assert [r["fits_after"] for r in recommendations(c, 16.0)] == [False]


def test_recommendations_list_the_cheapest_first_and_no_dominated_ones() -> None:
    c, _ = load_config(presets=["klein-9b"])
    recs = recommendations(c, 23.99)
    titles = [r["title"] for r in recs]
    assert titles[0].startswith("swap ") and titles[1].startswith("8-bit AdamW")
    assert any(t.startswith("fp8") for t in titles)
    # fp8 fits, so NF4 alone (worse quality, same family) is not offered; 768 px fits, so 512 px is not.
    assert not any(t.startswith("NF4") for t in titles) and "resolution 512" not in titles
