"""The plotted timestep density is exact: it matches the trainer's own σ draws, per scheme and shift."""

from __future__ import annotations

import pytest

from flux2_lora.config import TrainingSection
from flux2_lora.timesteps import density_curve, draw_sigmas


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"timestep_shift": "fixed", "shift": 3.0},
        {"timestep_sampling": "logit_normal", "logit_mean": 0.5, "logit_std": 0.8},
        {"timestep_sampling": "sigmoid", "sigmoid_scale": 2.0, "timestep_shift": "resolution"},
        {"timestep_sampling": "mode", "mode_scale": 1.29},
        {"timestep_sampling": "mode", "mode_scale": 1.5, "timestep_shift": "fixed", "shift": 2.0},
    ],
)
def test_density_matches_the_sampler(settings: dict) -> None:
    t = TrainingSection(**settings)
    points = 200
    curve = density_curve(t, 4096, points=points)
    bins = 10
    mass = [0.0] * bins
    for y, d in curve:
        mass[min(int(y * bins), bins - 1)] += d / points
    draws = draw_sigmas(t, 4096, 40_000, seed=3)
    freq = [0] * bins
    for s in draws:
        freq[min(int(s * bins), bins - 1)] += 1
    for m, f in zip(mass, freq):
        assert m == pytest.approx(f / len(draws), abs=0.012)
    assert sum(mass) == pytest.approx(1.0, abs=0.02)


def test_uniform_is_flat() -> None:
    assert {round(d, 9) for _, d in density_curve(TrainingSection(), 4096)} == {1.0}
