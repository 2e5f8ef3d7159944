"""Each timestep option changes the sampled σ distribution as specified (statistical tests)."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
import torch

from flux2_lora.config import TrainingSection
from flux2_lora.timesteps import draw_sigmas, image_tokens_for, mu_for_tokens, shift_sigma
from flux2_lora.training.flow import sample_density, sigmas_from_density

N = 20000


def sig(**kw: Any) -> list[float]:
    return draw_sigmas(TrainingSection(**kw), image_tokens=1024, n=N, seed=1)


def frac(xs: list[float], lo: float, hi: float) -> float:
    return sum(lo <= x < hi for x in xs) / len(xs)


def test_uniform() -> None:
    s = sig()
    assert abs(statistics.mean(s) - 0.5) < 0.01 and abs(frac(s, 0, 0.1) - 0.1) < 0.01


def test_logit_normal_mean_and_std() -> None:
    centred = sig(timestep_sampling="logit_normal")
    assert frac(centred, 0.3, 0.7) > 0.5  # uniform would give 0.4
    noisy = sig(timestep_sampling="logit_normal", logit_mean=1.0)
    assert statistics.median(noisy) == pytest.approx(1 / (1 + math.exp(-1)), abs=0.01)
    narrow = sig(timestep_sampling="logit_normal", logit_std=0.3)
    assert statistics.pstdev(narrow) < statistics.pstdev(centred) * 0.5


def test_sigmoid_scale_pushes_to_the_extremes() -> None:
    wide = sig(timestep_sampling="sigmoid", sigmoid_scale=3.0)
    tight = sig(timestep_sampling="sigmoid", sigmoid_scale=0.5)
    assert frac(wide, 0, 0.1) + frac(wide, 0.9, 1.01) > 0.35
    assert frac(tight, 0.35, 0.65) > 0.7


def test_fixed_shift_moves_mass_to_noise() -> None:
    plain, shifted = sig(), sig(timestep_shift="fixed", shift=3.0)
    assert statistics.median(shifted) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5), abs=0.01)
    assert statistics.mean(shifted) > statistics.mean(plain) + 0.15


def test_resolution_shift_grows_with_image_tokens() -> None:
    assert mu_for_tokens(256) == pytest.approx(0.5) and mu_for_tokens(4096) == pytest.approx(1.15)
    t = TrainingSection(timestep_shift="resolution")
    small = statistics.mean(draw_sigmas(t, image_tokens_for(512), N))
    large = statistics.mean(draw_sigmas(t, image_tokens_for(1024), N))
    assert 0.5 < small < large
    assert shift_sigma(0.5, "resolution", 0, 256) == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 1))


@pytest.mark.parametrize("scheme", ["uniform", "logit_normal", "sigmoid", "mode"])
def test_pure_sampler_matches_the_trainers_torch_sampler(scheme: str) -> None:
    t = TrainingSection(timestep_sampling=scheme, logit_mean=0.4, sigmoid_scale=2.0)
    pure = sorted(draw_sigmas(t, 1024, N))
    u = sample_density(
        scheme,
        N,
        generator=torch.Generator().manual_seed(0),
        logit_mean=0.4,
        logit_std=1.0,
        mode_scale=t.mode_scale,
        sigmoid_scale=2.0,
    )
    torch_sig = sorted(sigmas_from_density(u).tolist())
    ks = max(abs(a - b) for a, b in zip(pure[:: N // 200], torch_sig[:: N // 200]))
    assert ks < 0.03  # quantiles agree
