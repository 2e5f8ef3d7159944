"""The estimate of the data / loss / adapter options against the meta-tensor trace (within 3%), as
tests/memory/test_estimate.py checks the base matrix: masked loss, prior-prediction preservation, EMA,
disk caches; LoKr and LoHa (memory/adapter_acts.py)."""

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


# (variant, overrides): the first four and all-linear at 1024 px are what adapter_acts' per-layer figures
# were read off (for LoHa); the others check them where they were not.
ADAPTER_CASES = [
    ("klein-4b", ["dataset.resolution=512"]),
    ("klein-4b", ["dataset.resolution=768"]),
    ("klein-4b", ["dataset.resolution=512", "memory.gradient_checkpointing=false"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.target_modules=[all-linear]"]),
    ("klein-4b", ["dataset.resolution=1024"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.rank=64", "lora.alpha=64"]),
    ("klein-4b", ["dataset.resolution=768", "lora.target_modules=[all-linear]"]),
    ("klein-4b", ["dataset.resolution=1024", "memory.gradient_checkpointing=false"]),
    ("klein-4b", ["dataset.resolution=768", "training.batch_size=2"]),
    ("klein-9b", ["dataset.resolution=768"]),
]


def _adapter_case(kind: str, case: int) -> tuple[float, float]:
    """(the estimate, the trace) in GiB of one ADAPTER_CASES row for ``kind``, on 2 + 3 blocks."""
    from flux2_lora.training.trace import reduced, trace_training_step

    variant, overrides = ADAPTER_CASES[case]
    c = config("lora.rank=16", "lora.alpha=16", f"lora.type={kind}", *overrides, variant=variant)
    arch = reduced(VARIANTS[variant].transformer, 2, 3)
    return training_phase_on(c, arch), trace_training_step(c, arch)["peak_gib"]


@pytest.mark.parametrize("kind", ["lokr", "loha"])
@pytest.mark.parametrize(
    "case", range(len(ADAPTER_CASES)), ids=lambda i: " ".join(map(str, ADAPTER_CASES[i]))
)
def test_lokr_loha_estimate_within_3_percent_of_trace(kind: str, case: int) -> None:
    """LoKr/LoHa's delta-weight terms (memory/adapter_acts.py), per layer and per token: within 3% of the
    trace (the fitted constants before them were 8-10% over for LoHa at 1024 px with the default targets,
    and a LoRA's figures 20-41% under)."""
    estimated, traced = _adapter_case(kind, case)
    assert abs(estimated - traced) / traced < 0.03


def test_loha_estimate_within_3_percent_at_1024_px() -> None:
    estimated, traced = _adapter_case("loha", ADAPTER_CASES.index(("klein-4b", ["dataset.resolution=1024"])))
    assert abs(estimated - traced) / traced < 0.03
