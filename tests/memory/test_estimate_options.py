"""The estimate of the data / loss / adapter options against the meta-tensor trace (within 3%), as
tests/memory/test_estimate.py checks the base matrix: masked loss, prior-prediction preservation, EMA,
disk caches (3%); LoKr and LoHa (4%: see memory/adapter_acts.py)."""

from __future__ import annotations

import pytest

from flux2_lora.memory import estimate
from flux2_lora.variants import VARIANTS

from .matrix import config, training_phase_on

BASE = ["dataset.resolution=512", "lora.rank=16", "lora.alpha=16"]
OPTIONS = {
    "mask": ["dataset.mask_path=masks"],
    "mask-no-checkpointing": ["dataset.mask_path=masks", "memory.gradient_checkpointing=false"],
    "prior": ["dataset.regularization_path=reg", "training.preservation=prior_prediction"],
    "prior-no-checkpointing": [
        "dataset.regularization_path=reg",
        "training.preservation=prior_prediction",
        "memory.gradient_checkpointing=false",
        "training.batch_size=2",
    ],
    "ema-gpu": ["training.ema_decay=0.999"],
    "cache-to-disk": ["memory.cache_to_disk=true"],
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_estimate_within_3_percent_of_trace(name: str) -> None:
    from flux2_lora.training.trace import reduced, trace_training_step

    c = config(*BASE, *OPTIONS[name])
    arch = reduced(VARIANTS["klein-4b"].transformer, 2, 3)
    traced = trace_training_step(c, arch)["peak_gib"]
    assert abs(training_phase_on(c, arch) - traced) / traced < 0.03


def test_mask_and_prior_terms_are_counted() -> None:
    def acts(*o: str) -> float:
        return float(estimate(config(*BASE, *o)).phase_components["training"]["activations"])

    plain = acts()
    mask = acts("dataset.mask_path=masks")
    prior = acts("dataset.regularization_path=reg", "training.preservation=prior_prediction")
    tokens, channels = (512 // 16) ** 2, 128
    assert mask - plain == pytest.approx(4 * tokens * (1 + channels) / 2**30, rel=1e-6)
    assert prior - plain == pytest.approx(4 * tokens * channels / 2**30, rel=1e-6)


ADAPTER_CASES = [
    ["dataset.resolution=512"],
    ["dataset.resolution=768"],
    ["dataset.resolution=512", "memory.gradient_checkpointing=false"],
    ["dataset.resolution=1024", "lora.target_modules=[all-linear]"],
]


@pytest.mark.parametrize("kind", ["lokr", "loha"])
@pytest.mark.parametrize("case", range(len(ADAPTER_CASES)))
def test_lokr_loha_estimate_within_4_percent_of_trace(kind: str, case: int) -> None:
    """LoKr/LoHa's delta-weight terms (memory/adapter_acts.py): within 4% of the trace here (at worst
    -1.9% / +3.3% on these; a LoRA's figures were 20-41% under). Not 3%: see the xfail below."""
    from flux2_lora.training.trace import reduced, trace_training_step

    c = config("lora.rank=16", "lora.alpha=16", f"lora.type={kind}", *ADAPTER_CASES[case])
    arch = reduced(VARIANTS["klein-4b"].transformer, 2, 3)
    traced = trace_training_step(c, arch)["peak_gib"]
    assert abs(training_phase_on(c, arch) - traced) / traced < 0.04


@pytest.mark.xfail(
    strict=True,
    reason="LoHa's backward term is fitted without the token count (memory/adapter_acts.py): ~8% over at "
    "1024 px with the default targets; passes once the term sees the tokens",
)
def test_loha_estimate_within_3_percent_at_1024_px() -> None:
    from flux2_lora.training.trace import reduced, trace_training_step

    c = config("lora.rank=16", "lora.alpha=16", "lora.type=loha", "dataset.resolution=1024")
    arch = reduced(VARIANTS["klein-4b"].transformer, 2, 3)
    traced = trace_training_step(c, arch)["peak_gib"]
    assert abs(training_phase_on(c, arch) - traced) / traced < 0.03
